"""Where the shared, read-only test data lives (never copied into the repository)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
DIS_DEMO_IMAGES = FIXTURES / "dis-demo" / "images"
DIS_DEMO_REFERENCE = FIXTURES / "dis-demo" / "reference"
MANIFEST = FIXTURES / "isnet_state_dict_manifest.json"
DUTS_TE = SHARED / "data" / "duts-te-500"
DUTS_TR = SHARED / "data" / "duts-tr-300"
