"""Files written atomically (a temporary, then a rename) get the permissions the umask gives
a plain open or mkdir, not tempfile's 0600 / 0700: others read them on a shared filesystem."""
import os
import stat

import pytest

from test_batch_inference import bi
from tf_holstein import datagen, export, files, netcdf, records
from tf_holstein.configs import get_config


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    """The process's umask for the test, restored after it."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_datasets_exports_and_predictions_respect_the_umask(umask, tmp_path, perturbed_cnn):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    dataset = datagen.generate(get_config("smoke").data, tmp_path / "data", progress=False)
    written = [records.META_FILE, datagen.PROTOCOL_FILE, *(p.name for p in
                                                           dataset.glob("*.tfrecord"))]
    assert {name: mode(dataset / name) for name in written} == \
        dict.fromkeys(written, file_mode)

    meta = records.read_meta(dataset)
    saved_model = export.export_model(perturbed_cnn, tmp_path / "export",
                                      metadata=export.dataset_metadata(meta))
    assert (mode(saved_model), mode(tmp_path / "export" / "model.keras")) == \
        (dir_mode, file_mode)
    assert mode(saved_model / "saved_model.pb") == file_mode

    out = tmp_path / "predictions.npz"
    assert bi.main(["--model", str(saved_model), "--input", str(dataset), "--steps", "2",
                    "--out", str(out), "--no_progress"]) == 0
    assert mode(out) == file_mode


def test_a_netcdf_file_respects_the_umask(umask, smoke_dataset, tmp_path):
    pytest.importorskip("h5netcdf", reason="netCDF export needs the io extra")
    netcdf.export(smoke_dataset, tmp_path / "test.nc", split="test")
    assert mode(tmp_path / "test.nc") == 0o666 & ~umask


def test_a_temporary_is_created_hidden_beside_its_target_with_the_umasks_mode(umask, tmp_path):
    target = tmp_path / "meta.json"
    file, folder = files.create_temporary(target), files.create_temporary(
        target, directory=True)
    assert file.parent == folder.parent == tmp_path and file != folder
    assert file.name.startswith(files.temporary_prefix("meta.json"))
    assert (mode(file), mode(folder)) == (0o666 & ~umask, 0o777 & ~umask)
    # Named as a later run recognises a killed one's temporaries (remove_stale_temporaries).
    assert files._TEMPORARY.match(file.name)["pid"] == str(os.getpid())
    assert files._TEMPORARY.match(folder.name)["pid"] == str(os.getpid())
