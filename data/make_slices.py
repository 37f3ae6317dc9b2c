"""Rebuild the shipped data slices in this folder from the shared development data set.

Usage: python data/make_slices.py [SHARED_DATA_DIR]   (default ../shared/data next to the repo)

Copies files byte for byte, except the FEMTO slice (a subset of an .npz's snapshots, same keys)
and the IMS test-1 table slice (the first 51 lines). See README.md for origins and licenses.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMS_RAW = ("2003.10.22.12.06.24.gz", "2003.10.22.12.09.13.gz", "2003.10.22.12.14.13.gz")


def main(shared: Path) -> None:
    ims = shared / "ims_bearing"
    out = HERE / "ims_bearing"
    (out / "averaged").mkdir(parents=True, exist_ok=True)
    for name in ("2nd_test_resmaple_10minutes.csv", "Averaged_BearingTest_Dataset.csv"):
        shutil.copyfile(ims / "averaged" / name, out / "averaged" / name)
    with open(ims / "averaged" / "1st_test_resmaple_10minutes.csv", encoding="utf-8") as fh:
        head = [next(fh) for _ in range(51)]
    (out / "averaged" / "1st_test_resmaple_10minutes_first50.csv").write_text("".join(head), encoding="utf-8")
    (out / "raw_1st_test").mkdir(exist_ok=True)
    for name in IMS_RAW:
        shutil.copyfile(ims / "raw_1st_test_first50" / name, out / "raw_1st_test" / name)

    nab = HERE / "nab"
    nab.mkdir(exist_ok=True)
    shutil.copyfile(shared / "nab_artificial/artificialNoAnomaly/art_daily_small_noise.csv",
                    nab / "art_daily_small_noise.csv")
    shutil.copyfile(shared / "nab_artificial/artificialWithAnomaly/art_daily_jumpsup.csv",
                    nab / "art_daily_jumpsup.csv")
    shutil.copyfile(shared / "nab_artificial/NAB_LICENSE.txt", nab / "NAB_LICENSE.txt")

    lor = HERE / "lorenz"
    lor.mkdir(exist_ok=True)
    for kind in ("healthy", "broken"):
        name = f"watsoniotp.{kind}.phase_aligned.npy"
        shutil.copyfile(shared / "lorenz_developerWorks" / name, lor / name)

    fem = HERE / "femto"
    fem.mkdir(exist_ok=True)
    with np.load(shared / "femto_pronostia_learning_set/femto_learning_Bearing1_2_every4th.npz") as z:
        n = z["acc"].shape[0]
        keep = np.r_[0:20, n - 20:n]
        np.savez_compressed(
            fem / "femto_Bearing1_2_first20_last20.npz",
            acc=z["acc"][keep], time_of_day=z["time_of_day"][keep], snapshot_index=z["snapshot_index"][keep],
            source_file=z["source_file"][keep], n_snapshots_total=z["n_snapshots_total"],
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data")
