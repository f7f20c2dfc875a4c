r"""Figure 4: drawn by `reproduce/table1.py` from the same EM runs (one command makes Table 1,
Figure 4 and Figure 15); this entry point runs it with the same flags.

    python reproduce/fig4.py --quick              # = python reproduce/table1.py --quick
    python reproduce/fig4.py --quick --resume     # redraw from finished runs, recomputing nothing

Figure 4: FID (log2 axis) and IS of unconditional samples along the EM laps, one line per
corruption level and covariance. Figure 15: samples of each run's last lap, where the heuristic
covariances show their artifacts. Writes results/fig4[_quick].png.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("table1.py")), run_name="__main__")
