"""Build the wheel and install it into a fresh virtual environment the way users do: `pip install torch==2.13.0`, then
`pip install <wheel>` with no extras (dependencies from the package index). Then prepare the bundled model into an
empty cache there. Run in the background by conftest.py while the other tests run; tests/test_wheel.py uses the result.

    python tests/plain_install.py DIR       -> DIR/venv, DIR/cache, DIR/log.txt, DIR/done (exit code)
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "log.txt", "w")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LINGREG_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)

    def step(*cmd: str) -> None:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)

    try:
        step(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(REPO))
        (wheel,) = (root / "dist").glob("lm_eval_lingreg-*.whl")
        venv.create(root / "venv", with_pip=True)
        py = str(root / "venv" / "bin" / "python")
        step(py, "-m", "pip", "install", "-q", "torch==2.13.0")
        step(py, "-m", "pip", "install", "-q", str(wheel))
        step(str(root / "venv" / "bin" / "lingreg"), "prepare")
        rc = 0
    except (subprocess.CalledProcessError, ValueError) as e:
        log.write(f"FAILED: {e}\n")
        rc = 1
    log.close()
    (root / "done").write_text(str(rc))
    return rc


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
