"""Datasets: the small in-memory sets (Fashion-MNIST, digits, CIFAR-10) and image folders."""
