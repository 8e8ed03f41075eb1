"""``python -m benchmarks.bench_gpu``: the GPU bench beside the repository's other benchmark
scripts (``benchmarks/report.py`` assembles their tables). The bench itself is part of the
package, ``cascade/bench_gpu.py`` (also ``python -m cascade bench --device cuda``)."""

import sys

from cascade.bench_gpu import main

if __name__ == "__main__":
    sys.exit(main())
