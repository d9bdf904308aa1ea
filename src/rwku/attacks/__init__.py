"""Is it really gone? Attacks that try to bring an unlearned target back.

RWKU attacks an unlearned model with prompts only. The work after it showed that forgetting
is often shallow: a few steps of fine-tuning on related but harmless text bring the knowledge
back (Hu et al. 2024; Deeb & Roger 2024; Łucki et al. 2024), and putting the knowledge back
into the prompt makes the model use it again (Shumailov et al. 2024). This package measures
both on any model ``rwku`` unlearned:

* :mod:`~rwku.attacks.relearn` — fine-tune the unlearned model for a few steps on relearning
  data that cannot teach the evaluated answers (:mod:`~rwku.attacks.data`: ``split``,
  ``related``, ``unrelated``), evaluate on the held-out half of the forget probes along the
  way, and compare with the same attack on the original model (the control);
* :mod:`~rwku.attacks.incontext` — ask every forget probe again with a context from the
  target's passages (:mod:`~rwku.attacks.contexts`);
* :mod:`~rwku.attacks.recovery` — the recovery ratio R and the metrics it is computed on;
* :mod:`~rwku.attacks.subject` — what is attacked: a run folder (or a model directory) turned
  back into the original and the unlearned model.

``rwku attack relearn|incontext RUN`` (:mod:`rwku.cli_attack`) and a sweep's ``attacks:`` key
run them; ``rwku report`` adds the robustness table and figure. docs/attacks.md has the
protocol and every choice with its reason.
"""

ATTACKS = ("relearn", "incontext")
