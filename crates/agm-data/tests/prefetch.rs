//! The prefetcher yields exactly the batches of a direct loop, in order.

use std::sync::Arc;

use agm_data::{batches, epoch_order, Prefetcher, SplitTensors};
use candle_core::Device;

#[test]
fn prefetched_batches_equal_direct_batches() {
    let n = 23;
    let data: Vec<f32> = (0..n * 3).map(|i| i as f32).collect();
    let split = Arc::new(SplitTensors::new(vec![data], vec![vec![3]], (0..n as u32).map(|i| i % 4).collect()));
    let order = epoch_order(n, 11, 2, true);
    let direct: Vec<_> = batches(n, 5).into_iter().map(|r| split.batch(&order[r], &Device::Cpu).unwrap()).collect();
    let pre: Vec<_> = Prefetcher::new(split.clone(), order.clone(), 5, Device::Cpu, 2).map(|b| b.unwrap()).collect();
    assert_eq!(pre.len(), direct.len());
    for (a, b) in pre.iter().zip(&direct) {
        assert_eq!(a.inputs[0].to_vec2::<f32>().unwrap(), b.inputs[0].to_vec2::<f32>().unwrap());
        assert_eq!(a.labels.to_vec1::<u32>().unwrap(), b.labels.to_vec1::<u32>().unwrap());
    }
    // dropping early stops the thread without hanging
    let mut p = Prefetcher::new(split, order, 1, Device::Cpu, 1);
    assert!(p.next().is_some());
    drop(p);
}
