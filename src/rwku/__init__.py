"""rwku: Real-World Knowledge Unlearning (RWKU, NeurIPS 2024) as a toolkit.

Evaluate how well a language model has forgotten a real person (forget probes, adversarial
attacks, membership inference), what it kept about neighbouring entities, and what general
utility it lost. See ``docs/`` for the protocol and every deliberate difference from the
reference implementation.
"""

__version__ = "0.1.0"
PROTOCOL = "rwku-2024"
