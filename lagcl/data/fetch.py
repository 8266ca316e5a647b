"""Fetch the embedded default dataset: ML-100K from the recbole==1.2.1 wheel on PyPI.

The wheel is downloaded with pip (no install, no import of recbole) and its
`recbole/dataset_example/ml-100k/` atomic files are extracted next to it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from lagcl.errors import DataError

WHEEL = "recbole==1.2.1"
MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
PREFIX = "recbole/dataset_example/ml-100k/"


def ensure_ml100k(root: Path) -> Path:
    """Make sure `root` holds ml-100k.{inter,item,user}; download the wheel into root's parent if not."""
    root = Path(root)
    if all((root / m).is_file() and (root / m).stat().st_size > 0 for m in MEMBERS):
        return root
    wheel_dir = root.parent
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", str(wheel_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DataError(
                f"could not download {WHEEL} (it carries ML-100K): `{' '.join(cmd)}` said:\n{proc.stderr[-2000:]}\n"
                f"Download the wheel by hand into {wheel_dir} and run again."
            )
    root.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            for m in MEMBERS:
                tmp = root / f".{m}.tmp"
                tmp.write_bytes(zf.read(PREFIX + m))
                tmp.replace(root / m)
    except (zipfile.BadZipFile, KeyError) as exc:
        wheels[0].unlink(missing_ok=True)
        raise DataError(f"{wheels[0]} is not a usable recbole wheel ({exc}); it was removed, run again") from None
    return root
