//! The backward pass of the candle-core the workspace builds with
//! (`vendor/candle-core`, see `vendor/README.md`): the first gradient to
//! reach a tensor is stored as it is, later ones are added to it.

use candle_core::{DType, Device, Result, Tensor, Var};

fn close(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

#[test]
fn gradients_sum_over_every_consumer() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(&[[1f32, -2.0, 3.0], [0.5, 4.0, -1.0]], &dev)?)?;
    let w = Var::from_tensor(&Tensor::new(&[[2f32, 0.0], [1.0, -1.0], [0.5, 3.0]], &dev)?)?;
    let t = x.as_tensor();
    // x reaches the loss four ways: a matmul, a square, a sum and a sub.
    let product = t.matmul(w.as_tensor())?.sum_all()?;
    let square = t.sqr()?.sum_all()?;
    let sum = t.sum_all()?.affine(3.0, 0.0)?;
    let difference = (t.affine(2.0, 0.0)? - t)?.sum_all()?;
    let loss = (((product + square)? + sum)? - difference)?;
    let grads = loss.backward()?;
    let gx = grads.get(t).expect("x has a gradient");
    // d/dx: row sums of w, 2x, 3 and −(2 − 1).
    let w_rows = w.as_tensor().sum_keepdim(1)?.t()?.broadcast_as((2, 3))?;
    let want = ((w_rows + t.affine(2.0, 0.0)?)? + 2.0)?;
    assert!(close(gx, &want)? < 1e-6, "{gx} vs {want}");
    // d/dw = xᵀ 1.
    let gw = grads.get(w.as_tensor()).expect("w has a gradient");
    let want = t.t()?.matmul(&Tensor::ones((2, 2), DType::F32, &dev)?)?;
    assert!(close(gw, &want)? < 1e-6);
    Ok(())
}

#[test]
fn stored_gradients_are_contiguous_with_their_tensors_shape() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev)?.reshape((3, 4))?)?;
    let w = Var::from_tensor(&Tensor::arange(0f32, 20.0, &dev)?.reshape((5, 4))?)?;
    let b = Var::from_tensor(&Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &dev)?)?;
    // Single consumers only: w through a transpose, b through a
    // broadcast, x through a matmul. Each first gradient is stored as
    // given; a transposed or broadcast view must come back contiguous.
    let y = x
        .as_tensor()
        .matmul(&w.as_tensor().t()?)?
        .broadcast_add(b.as_tensor())?;
    let weighting = Tensor::arange(0f32, 15.0, &dev)?.reshape((3, 5))?;
    let grads = (y * &weighting)?.sum_all()?.backward()?;
    for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
        let g = grads.get(v.as_tensor()).expect("a gradient");
        assert!(g.is_contiguous(), "gradient of {name} is strided");
        assert_eq!(g.dims(), v.dims(), "gradient of {name}");
    }
    let gw = grads.get(w.as_tensor()).expect("w");
    let want = weighting.t()?.matmul(x.as_tensor())?;
    assert!(close(gw, &want)? < 1e-4);
    let gb = grads.get(b.as_tensor()).expect("b");
    assert!(close(gb, &weighting.sum(0)?)? < 1e-6);
    Ok(())
}

#[test]
fn one_gradient_is_shared_by_both_sides_of_an_add_without_aliasing_sums() -> Result<()> {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev)?)?;
    let b = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &dev)?)?;
    // a + b hands the same gradient to a and b; a is then used again, so
    // its slot is summed while b's must stay the single term.
    let s = (a.as_tensor() + b.as_tensor())?;
    let loss = ((&s * 2.0)?.sum_all()? + a.as_tensor().sum_all()?)?;
    let grads = loss.backward()?;
    let ga = grads.get(a.as_tensor()).expect("a").to_vec1::<f32>()?;
    let gb = grads.get(b.as_tensor()).expect("b").to_vec1::<f32>()?;
    assert_eq!(ga, [3.0, 3.0]);
    assert_eq!(gb, [2.0, 2.0]);
    Ok(())
}
