"""``lnn demo kws``: keyword spotting on synthesized speech, trained, quantized, packed and simulated bit-exact.

* :mod:`.synth`: eSpeak NG through ctypes (the ``espeakng-loader`` package; nothing is downloaded);
* :mod:`.data`: the seeded data set (ten keywords, unknown, silence), split by voice, cached on disk;
* :mod:`.frontend`: the MFCC front end (numpy). It runs on the chip's DSP, outside the NPU graph: the model's
  input is the feature matrix, and ``lnn run`` is fed the same features (``python -m
  lnn_backend_csk60xx.kws.frontend clip.wav -o x.npy``);
* :mod:`.models`: the networks (DS-CNN; CRNN: per-step convolutions, a GRU, a per-step classifier), built with torch;
* :mod:`.stream`: streaming detection: the front end hop by hop, any ``(frames, state) -> (scores, state)`` model,
  posterior smoothing and a threshold, the 5 s test sentence and its plot;
* :mod:`.demo`: the flow and its summary table.

Only :mod:`.models`, :mod:`.demo` and :func:`.stream.float_torch_step` need torch, and import it when called.
"""
