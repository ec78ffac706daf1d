import sys
from pathlib import Path

# Tests run with --import-mode=importlib: make tests/ importable for `from reference import ...`.
sys.path.insert(0, str(Path(__file__).parent))
