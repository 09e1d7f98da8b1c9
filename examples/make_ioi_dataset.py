"""Write `ioi_dataset.jsonl`: IOI prompts for the bundled model, as a dataset run reads them.

Each record has an `id`, the `text`, the indirect object as `answer` and the subject as
`contrast`, so the metric is their logit difference, as in the IOI literature.

    python -m examples.make_ioi_dataset [N] [SEED]

Prompts come from the held-out split of the corpus the bundled model was trained on (sentence
shapes and name pairs it never saw in training; `training.corpus`), so run it from the repository
root.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from training.corpus import ioi_example

OUT = Path(__file__).with_name("ioi_dataset.jsonl")


def main(n: int = 64, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for index in range(n):
        example = ioi_example(rng, "heldout")
        lines.append(
            json.dumps(
                {
                    "id": f"ioi-{index:03d}",
                    "text": example.prompt,
                    "answer": f" {example.io_name}",
                    "contrast": f" {example.s_name}",
                }
            )
        )
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{n} prompts -> {OUT}")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
