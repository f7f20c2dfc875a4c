r"""Figure 4: drawn by `reproduce/table1.py` from the same EM runs (one command makes Table 1
and Figure 4); this entry point runs it with the same flags.

    python reproduce/fig4.py --quick              # = python reproduce/table1.py --quick
    python reproduce/fig4.py --quick --resume     # redraw from finished runs, recomputing nothing

Figure 4: FID (log2 axis) and IS of unconditional samples along the EM laps, one line per
corruption level and covariance. Writes results/fig4[_quick].png.
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("table1.py")), run_name="__main__")
