"""Architectures featcache defines itself, in the key layouts of the research checkpoints that fill them.

- :mod:`~featcache.backbones.swav`: SwAV's wide ResNet-50s (``resnet50w2``, ``resnet50w4``, ``resnet50w5``);
- :mod:`~featcache.backbones.regnet`: the SEER RegNetY trunks (``seer_regnet_y_32gf`` ... ``seer_regnet_y_256gf``).

Each module lists its factories in ``ARCHS`` (name -> a zero-argument factory of a randomly initialised network that
ends in an ``fc`` classifier slot); :mod:`featcache.models` registers them, so these modules import nothing of it.
"""
