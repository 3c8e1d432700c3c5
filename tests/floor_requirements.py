"""What `make test-min` installs: funcnet's dependencies pinned at the floors pyproject.toml
declares (``name>=X`` becomes the pip constraint ``name==X``), and the test tools its subset
needs: the test extra without PyTorch (only the comparisons with torch use it) and ruff.

    python tests/floor_requirements.py constraints   # one pin a line
    python tests/floor_requirements.py tools         # requirements, space-separated
"""

import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
NOT_AT_THE_FLOOR = ("torch", "ruff")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def floor_constraints(project: dict) -> list[str]:
    """``name==X`` for each runtime dependency ``name>=X``; one without a floor is an error."""
    pins = []
    for requirement in project["dependencies"]:
        floor = re.search(r">=\s*([0-9][^,;\s]*)", requirement)
        if floor is None:
            raise ValueError(f"pyproject.toml: dependency {requirement!r} declares no floor")
        pins.append(f"{_name(requirement)}=={floor.group(1)}")
    return pins


def tool_requirements(project: dict) -> list[str]:
    """The test extra's requirements, less those `NOT_AT_THE_FLOOR` names."""
    extra = project["optional-dependencies"]["test"]
    return [r for r in extra if _name(r) not in NOT_AT_THE_FLOOR]


if __name__ == "__main__":
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    if sys.argv[1:] == ["constraints"]:
        print("\n".join(floor_constraints(project)))
    elif sys.argv[1:] == ["tools"]:
        print(" ".join(tool_requirements(project)))
    else:
        sys.exit("usage: python tests/floor_requirements.py constraints|tools")
