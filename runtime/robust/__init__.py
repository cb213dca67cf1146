"""What platforms do to images (transforms), the robust modes built on them, and whether an input lies inside
what a calibration covers."""
