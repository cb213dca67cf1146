"""The attribution methods: the loop as a method (``attribution.Attributor``), its encoder, LatentTracer, AEDR,
the platform mode, attribution from files, and the one method registry."""
