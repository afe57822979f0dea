"""Throughput of the pipeline's pieces on the default model and data: ``python -m tools.bench``.

A tool beside the stages (not a stage, not the library): it reads params.yaml through the stage kit's
section readers, so it measures what the pipeline would run, on whatever device there is, under the
runtime of :class:`modeconn.runtime.Runtime` (``--device``, ``--precision``, ``--channels-last``;
bf16 autocast and channels_last on CUDA by default, and forced by the options on the CPU too).

For the ``data`` and ``model`` sections of params.yaml this measures:

1. training images/s with the in-memory :class:`modeconn.data.Loader` (uint8 data on the device;
   shuffle, augmentation and normalisation done per batch);
2. the same with the conventional per-sample path: a ``torch.utils.data.Dataset`` that, like
   ``torchvision.datasets.FashionMNIST``, makes one PIL image per sample and runs the
   ``torchvision.transforms.v2`` pipeline on it (RandomCrop with 4-pixel padding and
   RandomHorizontalFlip as the augmentation asks, then ToImage, ToDtype, Normalize), behind a
   ``DataLoader``. Every usual setting is measured in the same run — 0 and 2 worker processes (and
   ``--workers``), each with and without ``pin_memory`` on CUDA — and the Loader is compared with the
   best of them (highest median images/s), not with one chosen in advance;
3. evaluation images/s (no grad, batch 1000, the test split) both ways, the best DataLoader setting
   chosen again (worker start-up counts here);
4. curve training images/s (paper, Sec. 3: a fresh t ~ U(0, 1) per minibatch and the network run
   at w = φ_θ(t), eq. 2, through the template's parameter slots) and its time per image relative to plain
   training. A curve step is one forward/backward of the network plus O(num_bends · |w|) to form
   φ_θ(t) and send the gradient to the bends, so the ratio should stay near 1 (the reference
   figure here is 1.5);
5. the time of one BatchNorm recalibration pass (:func:`modeconn.bn.recalibrate`) over 10k
   training images, for a BatchNorm variant of the model;
6. with ``--paper-model`` (the default on CUDA), the paper's network: VGG16 on 3x32x32 CIFAR-shaped
   synthetic uint8 data, 10 classes — training images/s, curve training images/s (Bezier, 3 bends,
   between two random initialisations) with its paired curve/plain ratio, and the images/s of one
   evaluation point (:func:`modeconn.points.measure`: BN recalibration, then the train and test
   passes) on VGG16-BN, since VGG16 has no BatchNorm and its recalibration would be a no-op;
7. peak resident memory of the process and of its largest DataLoader worker; on CUDA the peak
   device memory allocated in each section (peak statistics reset at the start of each);
8. the memory layout and the thread count the runtime uses, each against the other choice in the same
   rounds: training and BN recalibration in channels_last against contiguous (NCHW), and training on
   torch's default thread count against one thread;
9. with ``--peers`` (the default), modeconn against the paper's official code, the way that code trains and
   evaluates (:mod:`tools.official_loops`: ``utils.train`` over a per-sample DataLoader in NCHW, the per-layer
   ``CurveNet``, ``update_bn`` + ``utils.test`` for one point), paired per round: training, curve training
   and one evaluation point (BN recalibration over ``--bn-images`` training images, then the train pass over
   as many and the whole test split, on the BatchNorm variant of the model). The reference runs in the bench's
   process, so it has the runtime's heap setting too (``MODECONN_HEAP``): the speed-ups are the loops' and the
   data paths' alone.

The augmentation is ``data.augment`` (``--augment`` overrides it) on both paths. Training figures
are taken over ``--batches`` batches of 128 after 3 warm-up batches, with the optimiser settings
of the ``train`` and ``curve`` sections (the paper's VGG16 settings for the paper model). The
measurements run in rounds, each round measuring every figure once in a rotating order; a figure
is the median over ``--repeats`` rounds, reported with its range. A speed-up or a curve/plain ratio
is paired: one ratio per round (same round, same number of batches), reported as the median and
the range of those ratios. Worker start-up is in the evaluation figures of the DataLoader path
(a pass starts new workers, as every evaluation in a pipeline does) but not in its training figure
(they start in the warm-up). The validation split is not carved out: it changes no speed.
Every section's forward passes are watched (forward hooks) for the device, the memory format of the
input and of the first convolution's weight, and the output dtype they actually ran with; the report
says so, or warns (a curve's weights are φ_θ(t) as :mod:`modeconn.curves` lays them out).
Other processes on the same CPUs spoil every figure (OpenMP threads that wait for a busy core
slow down many-fold); the report says how many CPUs they used meanwhile and warns.
"""
