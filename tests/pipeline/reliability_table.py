"""Render the outcomes the fault and bad-input tests recorded as the Markdown table of docs/reliability.md.

    SDEDIT_RELIABILITY_LOG=/tmp/rel.jsonl python -m pytest -q tests/pipeline/test_faults.py \\
        tests/pipeline/test_resume.py tests/pipeline/test_bad_inputs.py tests/pipeline/test_security.py \\
        tests/pipeline/test_composite.py tests/pipeline/test_stroke_edit.py
    python tests/pipeline/reliability_table.py /tmp/rel.jsonl
"""

from __future__ import annotations

import json
import sys


def render(lines: list[str]) -> str:
    rows = ["| fault or bad input | what the user gets | outputs lost | outputs duplicated |", "|---|---|---|---|"]
    for line in lines:
        r = json.loads(line)
        rows.append(f"| {r['case']} | {r['outcome']} | {r['lost']} | {r['duplicated']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(render([line for line in open(sys.argv[1]) if line.strip()]))
