"""The allowed values of settings shared by every command, grid and recipe, declared once.

Torch-free, so that the CLI's ``--help`` and grid-file checks stay instant.
"""

PROFILES = ("cpu", "paper", "smoke")  # compute profiles; their recipes are in recipes.py
PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the hardware has native bf16 maths
COMPILES = ("auto", "on", "off")  # torch.compile: auto where a backend can run
TASKS = ("retrieval", "classification")  # what a judged set is scored on
# how a DSA draw composes its families: one a call, all in sequence, IDC's composition
DSA_MODES = ("S", "M", "C")
