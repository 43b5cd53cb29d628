"""Progressive growing's schedule against the official TrainingSchedule: rows worked out by
hand from tkarras/progressive_growing_of_gans train.py and config.py's presets (fp32 per-GPU
limits {256: 16, 512: 8, 1024: 4} included)."""
import pytest

from bigtrain.errors import ConfigError
from bigtrain.families.progan.growth import OFFICIAL_PRESETS, GrowthOptions, growth, resets_optimizer

# (preset, data resolution, gpus, kimg) -> (lod, resolution, alpha, minibatch, lr of G and D)
ROWS = [
    ("v2-1gpu", 1024, 1, 0, (8.0, 4, 1.0, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 599.999, (8.0, 4, 1.0, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 600, (8.0, 4, 1.0, 128, 0.001)),  # the fade starts: alpha 0 comes next
    ("v2-1gpu", 1024, 1, 900, (7.5, 8, 0.5, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 1200, (7.0, 8, 1.0, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 1350, (7.0, 8, 1.0, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 1950, (6.75, 16, 0.25, 128, 0.001)),
    ("v2-1gpu", 1024, 1, 4200, (5.0, 32, 1.0, 64, 0.001)),
    ("v2-1gpu", 1024, 1, 6300, (3.0, 128, 1.0, 16, 0.001)),
    ("v2-1gpu", 1024, 1, 8100, (1.5, 512, 0.5, 4, 0.001)),
    ("v2-1gpu", 1024, 1, 9300, (0.5, 1024, 0.5, 4, 0.0015)),
    ("v2-1gpu", 1024, 1, 12000, (0.0, 1024, 1.0, 4, 0.0015)),
    ("v2-8gpus", 1024, 8, 0, (8.0, 4, 1.0, 512, 0.001)),
    ("v2-8gpus", 1024, 8, 6300, (3.0, 128, 1.0, 32, 0.0015)),
    ("v2-8gpus", 1024, 8, 7800, (2.0, 256, 1.0, 32, 0.002)),
    ("v2-8gpus", 1024, 8, 9600, (0.0, 1024, 1.0, 32, 0.003)),
    ("v2-4gpus", 1024, 4, 9600, (0.0, 1024, 1.0, 16, 0.003)),  # base 16, limit 4 x 4
    ("v2-2gpus", 1024, 2, 8700, (1.0, 512, 1.0, 8, 0.0015)),  # base 8, limit 8 x 2 = 16
    ("v1-1gpu", 1024, 1, 0, (8.0, 4, 1.0, 16, 0.001)),
    ("v1-1gpu", 1024, 1, 1200, (7.5, 8, 0.5, 16, 0.001)),
    ("v1-1gpu", 1024, 1, 11200, (1.0, 512, 1.0, 6, 0.001)),
    ("v1-1gpu", 1024, 1, 12400, (0.5, 1024, 0.5, 3, 0.001)),
]


@pytest.mark.parametrize("preset, resolution, gpus, kimg, expected", ROWS)
def test_the_official_presets(preset, resolution, gpus, kimg, expected):
    g = growth(GrowthOptions(**OFFICIAL_PRESETS[preset]), round(kimg * 1000), resolution, gpus, 0.001, 0.001)
    lod, res, alpha, minibatch, lr = expected
    assert (g.lod, g.resolution, g.minibatch) == pytest.approx((lod, res, minibatch), abs=1e-9)
    assert g.alpha == pytest.approx(alpha, abs=1e-9) and g.fading == (alpha < 1)
    assert g.g_lr == g.d_lr == lr


def test_the_cifar10_schedule_grows_4_to_32_in_400_plus_400_kimg():
    opts = GrowthOptions(training_kimg=400, transition_kimg=400)
    assert [(g.resolution, g.alpha) for g in (growth(opts, k * 1000, 32, 1, 1e-3, 1e-3) for k in (0, 400, 600, 800, 1400, 2400, 20000))] == [
        (4, 1.0), (4, 1.0), (8, 0.5), (8, 1.0), (16, 0.5), (32, 1.0), (32, 1.0)]
    assert growth(opts, 0, 32, 1, 1e-3, 1e-3).minibatch == 16


def test_the_minibatch_is_a_multiple_of_the_processes_and_per_process_limits_hold():
    opts = GrowthOptions(minibatch={4: 130}, max_minibatch_per_gpu={8: 3})
    assert growth(opts, 0, 8, 4, 1, 1).minibatch == 128
    assert growth(opts, 10 ** 7, 8, 4, 1, 1).minibatch == 12  # base 16 at 8x8, at most 3 x 4
    assert growth(GrowthOptions(initial_resolution=8), 0, 32, 1, 1, 1).resolution == 8
    # the official "-nogrowing": start at the data's resolution with no phases
    assert growth(GrowthOptions(initial_resolution=32, training_kimg=0, transition_kimg=0), 5000, 32, 1, 1, 1).resolution == 32


def test_optimizers_reset_where_a_fade_starts_and_where_it_ends():
    assert resets_optimizer(8.0, 7.999) and resets_optimizer(7.001, 7.0)
    assert not resets_optimizer(7.5, 7.4) and not resets_optimizer(7.0, 7.0)
    opts = GrowthOptions(**OFFICIAL_PRESETS["v2-1gpu"])
    lods = [growth(opts, n, 1024, 1, 1, 1).lod for n in range(0, 3_000_000, 128)]
    resets = [n * 128 / 1000 for n, (a, b) in enumerate(zip(lods, lods[1:]), start=1) if resets_optimizer(a, b)]
    assert [round(k, 1) for k in resets] == [600.1, 1200.0, 1800.1, 2400.0]  # first steps past each boundary


@pytest.mark.parametrize("key, value", [("initial_resolution", 6), ("minibatch", {12: 8}), ("g_lr", {8: 0.0}), ("training_kimg", -1)])
def test_bad_options_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"progan.{key}"):
        GrowthOptions(**{key: value}).validate("progan")
