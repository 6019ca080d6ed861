"""Option groups shared by several commands (``cli.py`` and ``commands/``)."""
import click

from .errors import ConfigError


def int_range(low: int, high: int | None = None):
    """A click callback: an int option outside [low, high] is a ConfigError (the CLI's one ``error:`` line and exit
    code 2, unlike click.IntRange's usage block); None (not given) passes."""
    def check(ctx, param, value):
        if value is not None and (value < low or (high is not None and value > high)):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ConfigError(f"{max(param.opts, key=len)} must be {bound}, got {value}")
        return value

    return check


#: --threads of every command: intra-op threads, at least 1
threads_at_least_1 = int_range(1)


def cache_options(f):
    """--cache ...: the output-level step cache (runtime/cache.py); unset options keep the model's profile."""
    opts = [
        click.option("--cache", type=click.Choice(["off", "taylor"]),
                     help="Step cache: taylor extrapolates the velocity on skipped steps (default: the bundle's "
                          "profile, else off)."),
        click.option("--cache-interval", type=int, help="Compute every N-th step, extrapolate in between."),
        click.option("--cache-order", type=int, help="Extrapolation order 0 (reuse), 1 or 2."),
        click.option("--cache-warmup", type=int, help="Computed steps at the start."),
        click.option("--cache-tail", type=int, help="Computed steps at the end."),
        click.option("--cache-threshold", type=float,
                     help="Also compute early when the estimated relative extrapolation error exceeds this."),
        click.option("--cache-switch/--no-cache-switch", default=None,
                     help="Also compute the first step after each patch-size change (never extrapolate across a "
                          "switch)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def cache_dict(cache, cache_interval, cache_order, cache_warmup, cache_tail, cache_threshold,
               cache_switch=None) -> dict:
    """The --cache options as the dict ``api.cache_settings`` takes (None: not given, keep the profile's)."""
    return dict(mode=cache, interval=cache_interval, order=cache_order, warmup=cache_warmup, tail=cache_tail,
                threshold=cache_threshold, switch=cache_switch)


def read_profile_option(path, model: str | None, weights=None, bundle=None) -> dict:
    """``--profile PATH`` (a profile ``calibrate`` wrote), checked before anything loads against what it will run on:
    the same model (a preset's name, or a bundle's; a folder's name is not checked) and the same family (a video
    profile names its frames)."""
    from .api import VIDEO_MODELS, model_family
    from .models.registry import PRESETS
    from .quality.calibrate import read_profile

    name = None
    if bundle is not None:
        from .bundle import read_manifest

        name = read_manifest(bundle).model.get("name")
    elif (model in PRESETS or model in VIDEO_MODELS) and weights is None:
        name = model
    d = read_profile(path, name)
    video = model_family(model, weights, bundle) == "wan"
    if video != ("frames" in d):
        what = f"--bundle {bundle}" if bundle is not None else f"--model {model}"
        raise ConfigError(f"--profile {path} is {'a video' if 'frames' in d else 'an image'} model's profile; "
                          f"{what} is {'a video' if video else 'an image'} model")
    return d


def profile_settings(profile: dict, cache: dict) -> dict:
    """A profile as ``build_settings`` keywords: its schedule instead of the model's, and its step cache (off when
    it was measured without one) under the --cache options given (``cache``, None values: not given), whole, so no
    field falls back to a bundle manifest's cache."""
    from .settings import CacheSettings, ScheduleSettings

    base = CacheSettings.from_dict(profile.get("cache")).to_dict()  # every field: none falls back to the bundle's
    given = {k: v for k, v in cache.items() if v is not None}
    if given and "mode" not in given and base["mode"] == "off":
        given["mode"] = "taylor"  # a cache knob without --cache means the cache, as without a profile
    return dict(schedule=ScheduleSettings(**profile["schedule"]), cache=CacheSettings.from_dict({**base, **given}))
