"""netCDF export: a dataset split and a predictions file read back by xarray, without
TensorFlow, equal to what was exported."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tf_holstein import netcdf, physics, records

xr = pytest.importorskip("xarray", reason="netCDF export needs the io extra: "
                                          "pip install -e '.[io]'")
pytest.importorskip("h5netcdf", reason="netCDF export needs the io extra: "
                                       "pip install -e '.[io]'")


@pytest.fixture(scope="module")
def exported(smoke_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("netcdf") / "test.nc"
    netcdf.export(smoke_dataset, path, split="test")
    return path


def test_a_split_exports_equal_to_its_records(exported, smoke_dataset):
    data = records.load_split(smoke_dataset, "test")
    meta = data["meta"]
    with xr.open_dataset(exported) as ds:
        assert dict(ds.sizes) == {"trajectory": 2, "time": meta["T"] + 1, "mid_time": meta["T"],
                                  "site": meta["L"], "site_j": meta["L"]}
        np.testing.assert_array_equal(ds.rho_real + 1j * ds.rho_imag, data["rho"])
        np.testing.assert_array_equal(ds.mid_rho_real + 1j * ds.mid_rho_imag, data["mid_rho"])
        for key in ("Q", "P", "mid_Q", "mid_P", "phase"):
            np.testing.assert_array_equal(ds[key], data[key])
        np.testing.assert_array_equal(ds.trajectory, data["index"])
        assert ds.rho_real.dims == ("trajectory", "time", "site", "site_j")
        delta_rho, delta_q = physics.order_parameters(data["rho"], data["Q"])
        np.testing.assert_allclose(ds.Delta_rho, delta_rho, rtol=1e-6)
        np.testing.assert_allclose(ds.Delta_Q, delta_q, rtol=1e-6)
        np.testing.assert_allclose(ds.time[1] - ds.time[0], meta["time_step"])
        assert ds.time.attrs["units"] == "hbar/t"
        config = meta["config"]
        np.testing.assert_allclose(ds.t0, (config["pre_steps"] + data["phase"]) * config["dt"])
        np.testing.assert_allclose(ds.mid_time[0], config["save_interval"] // 2 * config["dt"])
        assert ds.attrs["g_f"] == config["g_f"] and ds.attrs["split"] == "test"
        assert json.loads(ds.attrs["meta_json"]) == meta
    small = exported.with_name("no_mid.nc")
    netcdf.export(smoke_dataset, small, mid=False)
    with xr.open_dataset(small) as ds:
        assert "mid_time" not in ds.sizes and "mid_Q" not in ds and "Q" in ds


def test_the_file_opens_without_tensorflow(exported):
    code = ("import sys; sys.modules['tensorflow'] = None\n"  # any import of it now fails
            "import xarray\n"
            f"ds = xarray.open_dataset({str(exported)!r})\n"
            "print(ds.Q.shape, float(ds.attrs['g_f']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["(2,", "13,", "8)", "0.8"]


def test_predictions_export_and_checks(smoke_dataset, tmp_path):
    data = records.load_split(smoke_dataset, "test")
    steps = 5
    states = {key: data[key][::-1, :steps + 1] for key in records.STATE_KEYS}
    delta = [np.asarray(x, np.float32) for x in physics.order_parameters(states["rho"],
                                                                          states["Q"])]
    path = tmp_path / "predictions.npz"
    np.savez(path, index=data["index"][::-1], Delta_rho=delta[0], Delta_Q=delta[1], **states)
    out = tmp_path / "predictions.nc"
    netcdf.export(smoke_dataset, out, predictions=path)
    with xr.open_dataset(out) as ds:
        assert ds.attrs["source"] == "prediction" and "mid_time" not in ds.sizes
        np.testing.assert_array_equal(ds.trajectory, [1, 0])
        np.testing.assert_array_equal(ds.Delta_Q, delta[1])
        np.testing.assert_array_equal(ds.Q, states["Q"])
        np.testing.assert_array_equal(ds.phase, data["phase"][::-1])
        assert ds.sizes["time"] == steps + 1

    np.savez(path, index=np.array([0, 7]), Delta_rho=delta[0], Delta_Q=delta[1])
    with pytest.raises(ValueError, match=r"index runs 0..7, but the test split has "
                                         r"trajectories 0..1"):
        netcdf.export(smoke_dataset, out, predictions=path)
    np.savez(path, index=np.array([0, 1]), Delta_rho=delta[0], Delta_Q=delta[1],
             Q=states["Q"][..., :4])
    with pytest.raises(ValueError, match=r"Q has shape \(2, 6, 4\), expected \(2, 6, 8\)"):
        netcdf.export(smoke_dataset, out, predictions=path)
    np.savez(path, index=np.array([0, 1]), Delta_rho=np.zeros((2, 40)), Delta_Q=delta[1])
    with pytest.raises(ValueError, match="1 <= steps <= 12"):
        netcdf.export(smoke_dataset, out, predictions=path)
    # The refused exports left the good file as it was.
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds.Delta_Q, delta[1])


def test_the_command_line_writes_and_reports_bad_input_in_one_line(smoke_dataset, tmp_path):
    def netcdf_command(*args):
        return subprocess.run([sys.executable, "-m", "tf_holstein.netcdf", *args],
                              capture_output=True, text=True)

    out = tmp_path / "small.nc"
    written = netcdf_command("--data", str(smoke_dataset), "--out", str(out), "--no_mid")
    assert written.returncode == 0, written.stderr
    with xr.open_dataset(out) as ds:
        assert "mid_Q" not in ds and ds.sizes["trajectory"] == 2
    failed = netcdf_command("--data", str(smoke_dataset), "--split", "nope", "--out",
                            str(tmp_path / "nope.nc"))
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("netcdf: error:")
    assert not (tmp_path / "nope.nc").exists()
