"""RLP — reward learning on policy (Lang, Huang, Li, NAACL 2024, arXiv 2403.19279).

Refit the reward model on the policy's own samples, then run PPO again from the SFT policy:

* :func:`synthesize_preferences` (SPG): preference pairs from the semantic clusters of n samples per instruction;
* :class:`UMLLoss` (UML): a multi-view information-bottleneck loss on the reward model's representation of pairs of
  samples of the same instruction, as a ``reward_loss`` plugin;
* judges for SPG's clusters: :class:`ExactMatchJudge`, :class:`EmbeddingJudge`, :class:`NLIJudge`.

The ``rlp`` stage (``icegrt-trl rlp``) runs the whole loop; ``docs/rlp.md`` has the evidence.
"""

from .judges import EmbeddingJudge, ExactMatchJudge, Judge, ModelUnavailable, NLIJudge, build_judge
from .spg import cluster, synthesize_preferences
from .uml import UMLLoss, mib_loss

__all__ = ["EmbeddingJudge", "ExactMatchJudge", "Judge", "ModelUnavailable", "NLIJudge", "UMLLoss", "build_judge",
           "cluster", "mib_loss", "synthesize_preferences"]
