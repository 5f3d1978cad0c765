"""lnn-ops-example: a third-party lnn op package that adds PReLU (``example.PReLU``).

It is an ordinary plugin, found through the ``lnn`` entry point ``example`` of its distribution:
``prelu`` holds the op family (the float spellings it claims and the quantized module), ``rules``
the CSK60xx hardware rules for it, and ``plugin`` only the ``@hookimpl`` functions that hand
both to lnn.
"""

__version__ = "0.1.0"

# the op's names, here so that ``rules`` and ``csk60xx`` (used by lnn pack/run/check) import no torch
OP_ID = "example.PReLU"
#: the IR op type the writer emits (and the CSK60xx dialect and simulator know through this package)
IR_OP = "PReluInt"
