"""Measured private-inference cost: export a linearized model, run it under SPU's two-party protocols.

:mod:`search.pi.export` (torch) writes a neutral graph (:mod:`search.pi.graph`); :mod:`search.pi.runner`
(JAX and SPU, no torch) runs it with two parties on this machine, in a subprocess of its own;
:mod:`search.pi.measure` ties the two together for ``python -m search.pi`` and ``search.report``.
"""
