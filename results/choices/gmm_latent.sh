# 10-shot MNIST accuracy of the CPU-preset GMM-CEBM latent: posterior mean vs most probable component.
# Run from the repo root after bash run_all.sh --quick --data-dir ../shared/data.
python -c "
import cebm, evaluate, numpy as np
m, _ = cebm.load_model('runs/cebm-gmm_mnist_cpu_s0')
xtr, ytr = cebm.load_dataset('mnist', '../shared/data'); xte, yte = cebm.load_dataset('mnist', '../shared/data', train=False)
for mode in ('mean', 'map'):
    m.latent_mode = mode
    ftr, fte = evaluate.encode(m.latent, xtr, 'cpu'), evaluate.encode(m.latent, xte, 'cpu')
    for std in (True, False):
        acc = evaluate.few_shot(ftr, ytr.numpy(), fte, yte.numpy(), ['10'], 10, std)['10']
        print(mode, 'standardised' if std else 'raw', f'{100 * np.mean(acc):.1f} ± {100 * np.std(acc):.1f}')
"
