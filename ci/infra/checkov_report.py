"""Summarize checkov's JSON report; exit 1 on any failed check, parsing error or unexplained skip.

Usage: python checkov_report.py REPORT.json   (stdlib only)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def reports(data) -> list[dict]:
    """checkov prints one report object, a list of them (several frameworks), or a bare
    summary when a framework found nothing to scan."""
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if "summary" in item:
            out.append(item)
        elif "passed" in item:  # empty framework: the summary alone
            out.append({"check_type": "(empty)", "summary": item, "results": {}})
    return out


def main(path: str) -> int:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        print("checkov did not produce a JSON report:\n" + text[-4000:], file=sys.stderr)
        return 1
    totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    problems = 0
    for report in reports(data):
        summary = report["summary"]
        for key in totals:
            totals[key] += int(summary.get(key, 0))
        results = report.get("results", {})
        for check in results.get("failed_checks", []):
            lines = check.get("file_line_range") or ["?", "?"]
            print(
                f"  FAILED  {check['check_id']} {check['resource']} "
                f"({check.get('file_path', '?')}:{lines[0]}-{lines[1]}): {check.get('check_name', '')}"
            )
        for check in results.get("skipped_checks", []):
            reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()
            print(f"  skipped {check['check_id']} {check['resource']}: {reason or '(NO REASON GIVEN)'}")
            if not reason or reason.lower() == "no comment provided":
                problems += 1
    print(
        "checkov summary: "
        f"passed={totals['passed']} failed={totals['failed']} skipped={totals['skipped']} "
        f"parsing_errors={totals['parsing_errors']} resources={totals['resource_count']}"
    )
    if problems:
        print(f"checkov: {problems} skip(s) without a reason", file=sys.stderr)
    if totals["resource_count"] == 0:
        print("checkov: scanned no resources", file=sys.stderr)
        return 1
    return 1 if totals["failed"] or totals["parsing_errors"] or problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
