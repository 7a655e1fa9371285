"""Fidelity/diversity metrics: FID, sFID, IS, KID, precision/recall, density/coverage via torch-fidelity.

Import what you use from its module: `registry` (the metrics and extractors, data only, no torch), `evaluate`
(metrics.json for a samples folder), `extractors` (importing it registers the "inception" and "evaluator" feature
extractors with torch-fidelity), `fid`, `prdc`, `statistics`. This package imports none of them itself, so the
report can read the registry without torch.
"""
