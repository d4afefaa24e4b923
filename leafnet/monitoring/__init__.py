"""Drift monitoring: are served requests still like the images the model was trained on?

The handler logs `image_stats` (leafnet/serving/image_stats.py) and the top-1 answer of each request; the
modules here hold one concern each: `reference` builds and reads the training-side sample that export
stores as drift_reference.json, `records` parses the handler's log lines and picks a window, `drift`
compares the two with two-sample tests, `report` runs it all for scripts/drift_report.py and writes
drift.json, `figure` draws drift.png.
"""
