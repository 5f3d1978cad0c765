"""lnn target CSK60xx (VENUS): ONNX dialect, graph passes, memory planner, model.bin packer, int8 simulator.

Nothing in this package imports torch: a build server packs and simulates with onnx, numpy and cffi.

The chain, end to end::

    from lnn_backend_csk60xx.pipeline import pack_onnx
    from lnn_backend_csk60xx.simulator import Simulator

    blob = pack_onnx("model.onnx")            # read -> infer shapes -> plan memory -> model.bin bytes
    outputs = Simulator(blob).run([x])        # the C int8 simulator, bit-exact to the chip arithmetic
"""

__version__ = "0.1.0"
