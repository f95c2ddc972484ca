"""CNN classifiers that the entropic sparsification starts from (LeNet-5, VGG-16-BN, ResNet-18)."""

from lightning_modules.components.cnn.lenet import LeNet5, LeNet5Caffe
from lightning_modules.components.cnn.resnet_cifar import ResNet18
from lightning_modules.components.cnn.vgg import VGG16BN

__all__ = ["VGG16BN", "LeNet5", "LeNet5Caffe", "ResNet18"]
