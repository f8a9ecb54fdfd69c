"""Ray job entrypoint: the judge as a Hugging Face folder for judge.engine=vllm, e.g.

ray job submit --working-dir . -- python jobs/export_judge.py --config configs/ml100k.yaml
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the driver's cwd is the uploaded repo; make the package
# importable even where it is not pip-installed (the cluster image normally installs it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgrec_ray.cli import export_judge_main

if __name__ == "__main__":
    sys.exit(export_judge_main())
