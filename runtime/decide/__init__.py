"""What a loss means: complexity, the calibration, the Grubbs and quantile tests, the reproducibility band, the
calibrated early exit, several models, and the ``AttributionResult`` they make."""
