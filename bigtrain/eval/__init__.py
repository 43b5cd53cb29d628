"""Evaluation: FID / IS / KID / PRDC comparable with published numbers, inside distributed training.

    inception.py   the TF "2015-12-05" FID Inception-v3 in plain torch (no torchvision), its
                   TF1 bilinear resize and normalisation; `load_inception`
    resize.py      the `--resize` modes: legacy (TF1 bilinear) and clean (clean-fid's PIL bicubic)
    weights.py     finding / downloading / checking the standard weights file
    metrics.py     torchmetrics FID, IS, KID in float64 on precomputed features (`MetricSet`),
                   cross-rank sync, `rank_share`
    prdc.py        precision, recall, density, coverage with exact k-NN radii in blocks
    intra_fid.py   per-class reference statistics and intra-class FID
    repeats.py     `eval --repeats K`: K evaluations as mean, std and values
    evaluate.py    `Evaluator` / `evaluate_generator`: N samples across ranks -> metrics + protocol
    images.py      one pass over every image of a data set (npz, image folder, shards)
    ref_stats.py   reference statistics files (pytorch-fid / TTUR / StudioGAN layout + metadata)
    protocol.py    protocol records and the comparability warnings
    provenance.py  code version, config and data set hashes, hardware, training records
    commands.py    `bigtrain eval`, `bigtrain fid`, `bigtrain ref-stats`
    sweep.py       `bigtrain eval --all-checkpoints`: stored, resumable checkpoint scores
    report.py      `bigtrain report`: runs' evaluations as one table;  plot.py  its --plot

The README (Evaluation) explains how these numbers relate to published ones.
"""
