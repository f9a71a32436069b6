"""Predict with a logged or registered medtune model on new images (see ``medtune.serving.predict``).

python predict.py --model models:/seg-synthetic-1a2b3c4d@champion --input photos/ --out masks_out
python predict.py --model models:/whole_cls-synthetic-1a2b3c4d/2 --input data/synthetic/test.json --out cls_out
"""

from __future__ import annotations

import sys

from medtune.serving.predict import main

if __name__ == "__main__":
    sys.exit(main())
