"""The compile cache never takes the engine down: a cache that cannot be written (not a folder,
full disk) serves without caching (and warns). A truncated entry is rebuilt and logged:
test_ready_guarantee.py::test_compile_cache_warm_restart_and_corrupt_entries."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ember.model.loader import ModelFolder, build_model
from ember.runner import aot_package
from ember.runner.aot_package import load_or_compile
from ember.runner.compile import ShapePlan

PLAN = ShapePlan(max_batch=2, max_seq=16, max_tokens=32)
IDS = torch.tensor([[2, 10, 11, 12, 3], [2, 14, 3, 0, 0]])
MASK = (IDS != 0).long()


def copy_to_a_full_disk(full: Path) -> Callable[..., object]:
    """shutil.copyfile failing as it does when the disk under `full` is full (the compiler's own
    copies elsewhere still work)."""
    copy = shutil.copyfile

    def copyfile(src: object, dst: object, **kwargs: object) -> object:
        if Path(str(dst)).is_relative_to(full):
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(src, dst, **kwargs)

    return copyfile


@pytest.mark.parametrize("fault", ["cache path is a file", "disk full"])
@torch.inference_mode()
def test_a_cache_that_cannot_be_written_serves_without_caching(tiny_bert: Path, tmp_path: Path, fault: str,
                                                               caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if fault == "disk full":  # the copy into the cache fails as a full disk makes it fail
        cache = tmp_path / "cache"
        monkeypatch.setattr(aot_package.shutil, "copyfile", copy_to_a_full_disk(cache))
    else:  # a real OSError from the filesystem: mkdir under a regular file
        (tmp_path / "file").write_text("not a folder")
        cache = tmp_path / "file" / "cache"
    model = build_model(ModelFolder.read(tiny_bert), torch.float32)
    with caplog.at_level("WARNING", logger="ember.runner.aot_package"):
        built = load_or_compile(model, PLAN, cache, "key", pad_id=0)
    assert "serving without caching it" in caplog.text
    assert built.path is None and not built.from_cache
    torch.testing.assert_close(built.run(IDS, MASK), model(IDS, MASK), atol=1e-5, rtol=1e-4)
    if fault == "disk full":
        assert list(cache.iterdir()) == []  # no half-written scratch file is left behind
