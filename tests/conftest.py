"""Shared fixtures: a single-rank guided-diffusion process group and one CPU thread per test process."""

import os
import warnings

import pytest
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning, module="guided_diffusion")

_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def dist_env():
    """The torch.distributed environment variables, restored after the test (scripts set them)."""
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def gd_dist(dist_env):
    """Upstream ``dist_util.setup_dist()`` (mpi4py singleton + gloo), torn down and env restored after."""
    import torch.distributed as dist
    from guided_diffusion import dist_util

    dist_util.setup_dist()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """A 5-subject BraTS-2020-layout demo cohort of 48x48x24 voxels with its name_mapping.csv."""
    from plugins.data.demo_cohort import write_cohort

    folder = tmp_path_factory.mktemp("cohort") / "brats"
    write_cohort(str(folder), 5, seed=0, shape=(48, 48, 24), progress=False)
    return folder


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/<name>.py`` as a module (scripts are not a package)."""
    import importlib.util

    root = os.path.join(os.path.dirname(__file__), "..", "scripts")

    def load(name):
        spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(root, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def run_script(load_script):
    """``run(name, *argv)``: ``scripts/<name>.py``'s main in-process as from the shell (its exit status), the
    upstream logger closed after."""
    from guided_diffusion import logger

    from plugins.common.errors import run_main

    def run(name, *argv):
        code = run_main(load_script(name).main, [str(a) for a in argv])
        if logger.get_current() is not None:
            logger.get_current().close()
        return code

    return run
