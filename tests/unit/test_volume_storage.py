"""Reconstructions are stored compressed and read back bit for bit (issue 9, disk)."""

import h5py
import numpy as np

from multiscope.callbacks.tomo import VOLUME_DATASET, write_volume


def test_volume_is_compressed_losslessly(tmp_path):
    rng = np.random.default_rng(0)
    # A reconstruction-like volume: smooth structure plus noise at 10 % of it.
    z, y, x = np.mgrid[0:16, 0:96, 0:96]
    volume = 0.02 * np.sin(x / 9.0) * np.cos(y / 7.0) + 0.002 * rng.standard_normal(x.shape)
    volume = volume.astype(np.float32)
    path = tmp_path / "recon.h5"
    write_volume(path, volume, {"index": 1}, angles_rad=np.linspace(0, np.pi, 19))
    with h5py.File(path, "r") as f:
        stored = f[VOLUME_DATASET]
        assert stored.compression == "gzip" and stored.shuffle
        assert stored.chunks == (1, 1, 96, 96)
        np.testing.assert_array_equal(stored[0], volume)  # lossless: scores unchanged
        assert stored.id.get_storage_size() < 0.95 * volume.nbytes
