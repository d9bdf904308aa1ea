"""The parts of the transformers engine, one concern a module; :class:`rwku.models.hf.HFLanguageModel`
composes them (each module's docstring says what it owns):

* :mod:`~rwku.models.engine.planning`: the cost model, shared prefixes, batches and prompt passes;
* :mod:`~rwku.models.engine.workers`: worker threads and work sharing between them;
* :mod:`~rwku.models.engine.prefill`: the prefix store and the forward passes over prompts;
* :mod:`~rwku.models.engine.decoding`: the decode loop and speculation;
* :mod:`~rwku.models.engine.scoring`: log-probs and membership-inference statistics.

The KV cache and attention they run on are :mod:`rwku.models.kvcache`, the drafts
:mod:`rwku.models.drafting`, the packed linear layers :mod:`rwku.models.packed`.
"""
