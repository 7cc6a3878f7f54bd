"""Sample quality of a generator, measured with a classifier trained by fedcomp on the same
data set (a domain Fréchet distance, not Inception's FID: its numbers are comparable only
between runs that use the same classifier).

- `frechet_distance`: ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}) between Gaussians fitted to
  the classifier's penultimate features of real test images and of generated ones;
- `class_coverage`: how evenly generated samples cover the classes, trusting each predicted
  class as much as the classifier is accurate on it: Σ_c a_c · min(p_c, 1/C) / Σ_c a_c/C,
  with p_c the share of samples predicted as c and a_c the classifier's test accuracy on c;
  1 when the samples are spread evenly over classes the classifier recognises, 1/C when
  they all fall in one class (mode collapse).

References: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium" (NeurIPS), the Fréchet distance.
"""

import numpy as np
import scipy.linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
  root = root.real  # numerical noise can leave tiny imaginary parts
  value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root)
  return float(max(value, 0.0))


def class_coverage(predicted: np.ndarray, num_classes: int, class_accuracy: np.ndarray) -> float:
  """Accuracy-weighted class coverage of generated samples (see the module docstring).

  Args:
    predicted: (N,) the classifier's predicted class of each generated sample.
    num_classes: C.
    class_accuracy: (C,) the classifier's test accuracy per class.
  """
  share = np.bincount(np.asarray(predicted), minlength=num_classes)[:num_classes] / len(predicted)
  acc = np.asarray(class_accuracy, np.float64)
  return float((acc * np.minimum(share, 1.0 / num_classes)).sum() / (acc.sum() / num_classes))
