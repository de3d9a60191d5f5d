"""The methods that compare samples by their penultimate embeddings (RKD, PKT, CC): one layer pair,
by default each model's classifier input (RepDistiller's `feat[-1]`, `features.classifier_input`):
the pooled feature vector of a ResNet, WRN, VGG or torchvision net, the fc layer's ReLU output of
kdexp's CNN, the last hidden layer of an MLP (its head is the Linear itself: `head:input`).
"""

from __future__ import annotations

from kdexp.distill.features import classifier_input
from kdexp.distill.methods.hint_layers import LayerPairMethod


class EmbeddingMethod(LayerPairMethod):
    """A single-pair method whose layers default to each model's penultimate embedding."""

    single = True

    def resolve(self, student, teacher) -> None:
        self.student_names = self.student_names or [classifier_input(student)]
        self.teacher_names = self.teacher_names or [classifier_input(teacher)]
