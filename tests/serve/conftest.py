"""Fixtures of the serve tests: flux-mini's bundle built once, and (test_service.py) one local Ray Serve app."""
import pytest


@pytest.fixture(scope="session")
def flux_mini_bundle(tmp_path_factory):
    """flux-mini built into a 3-size bundle once per test session (about 45 s on 2 cores)."""
    from ddit_export.export.build import build_bundle
    from ddit_export.settings import BuildSettings

    out = tmp_path_factory.mktemp("serve-bundle") / "flux-mini"
    return build_bundle(BuildSettings(model="flux-mini", out=str(out)), progress=False, log=lambda *a: None)


@pytest.fixture(scope="session")
def flux_mini_runtime(flux_mini_bundle):
    """(BundleModel, ONNX Runtime backend) of that bundle, one thread (as a replica runs it)."""
    from ddit_export.runtime.bundle_model import open_bundle

    model, backend = open_bundle(flux_mini_bundle, threads=1)
    yield model, backend
    backend.deactivate()
