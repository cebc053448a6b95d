//! Packed model files (`shadowpeft pack`, docs/packed.md): a packed export or base loads,
//! from a directory and streamed chunk by chunk as a browser does, with exactly the logits and
//! greedy tokens of the same model quantised as it loads (the same blocks, uploaded as they
//! are); a corrupt or inconsistent pack gets an error naming the file and the tensor.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use safetensors::SafeTensors;
use sha2::Digest;
use shadowpeft::model::pack::{pack, packed_config, INDEX};
use shadowpeft::model::stream::SafetensorsStream;
use shadowpeft::model::weights::Weights;
use shadowpeft::{
    generate, DirSource, GenerateOptions, LoadOptions, MemSource, Mode, Readout, ShadowModel,
    WeightFormat,
};

const BLOCKED: [WeightFormat; 3] = [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4];

fn demo(part: &str) -> PathBuf {
    root().join("models/demo").join(part)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shadowpeft-packed-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Packs `src` in `format` into a new dir, shards of at most `shard` bytes, as the CLI does.
fn pack_dir(src: &Path, format: WeightFormat, shard: usize, tag: &str) -> PathBuf {
    let out = scratch(tag);
    let w = pollster::block_on(Weights::load_hf(&DirSource::open(src).unwrap())).unwrap();
    let p = pack(&w, format, shard).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    let cfg = packed_config("config.json", &cfg, format, &p.unpacked).unwrap();
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".safetensors") && name != "config.json" {
            std::fs::copy(f.path(), out.join(&name)).unwrap();
        }
    }
    std::fs::write(out.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::write(out.join(INDEX), serde_json::to_vec(&p.index).unwrap()).unwrap();
    for (name, bytes) in &p.shards {
        std::fs::write(out.join(name), bytes).unwrap();
    }
    out
}

fn opts(weights: WeightFormat) -> LoadOptions {
    LoadOptions {
        weights,
        ..Default::default()
    }
}

fn prompt() -> Vec<u32> {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/demo/golden.json")).unwrap(),
    )
    .unwrap();
    g["prompts"][0]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// All logits of the demo prompt, and 24 greedy tokens after it.
fn outputs(model: &ShadowModel) -> (Vec<f32>, Vec<u32>) {
    outputs_of(model, &prompt())
}

/// All logits of `ids`, and 24 greedy tokens after them.
fn outputs_of(model: &ShadowModel, ids: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let gpu = gpu().unwrap();
    let ids = ids.to_vec();
    let mut s = model.new_session(gpu);
    let attached = model.mode() == Mode::Attached;
    let out =
        pollster::block_on(model.forward(gpu, &mut s, &ids, Readout::AllLogits, attached)).unwrap();
    let mut s = model.new_session(gpu);
    let o = GenerateOptions {
        max_new_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let g = pollster::block_on(generate(gpu, model, &mut s, &ids, &o, |_| Ok(true))).unwrap();
    (out.logits, g.tokens)
}

fn export(dir: &Path, weights: WeightFormat) -> shadowpeft::Result<ShadowModel> {
    pollster::block_on(ShadowModel::load_export(
        gpu().unwrap(),
        &DirSource::open(dir)?,
        &opts(weights),
    ))
}

#[test]
fn packed_exports_equal_quantising_on_load() {
    if gpu().is_none() {
        return;
    }
    for format in BLOCKED {
        // Small shards: several files, a matrix never split across two.
        let dir = pack_dir(
            &demo("export"),
            format,
            256 << 10,
            &format!("export-{format}"),
        );
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(INDEX)).unwrap()).unwrap();
        let shards = idx["metadata"]["shards"].as_object().unwrap();
        assert!(shards.len() > 1, "{format}: {} shard(s)", shards.len());
        for (name, s) in shards {
            let len = std::fs::metadata(dir.join(name)).unwrap().len();
            assert_eq!(s["size"].as_u64(), Some(len), "{name}");
            assert_eq!(s["sha256"].as_str().map(str::len), Some(64), "{name}");
        }
        // Loaded as the files say (the default f32 asks for nothing else).
        let packed = export(&dir, WeightFormat::F32).unwrap();
        assert_eq!(packed.weight_format(), format);
        let on_load = export(&demo("export"), format).unwrap();
        let (l1, t1) = outputs(&packed);
        let (l2, t2) = outputs(&on_load);
        assert_eq!(t1, t2, "{format}: greedy tokens");
        assert_eq!(
            l1, l2,
            "{format}: logits of the packed and the on-load blocks"
        );
        // Streamed in small chunks, as the browser hands them over.
        let streamed = streamed_export(&dir);
        assert_eq!(outputs(&streamed).0, l1, "{format}: streamed");
        // Another blocked format is refused with what the files hold.
        let other = if format == WeightFormat::Q4 {
            WeightFormat::Q8
        } else {
            WeightFormat::Q4
        };
        let e = export(&dir, other)
            .err()
            .expect("a mismatched format is refused")
            .to_string();
        assert!(
            e.contains("config.json") && e.contains(&format!("packed as {format}")),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn packed_exports_of_every_fixture_equal_quantising_on_load() {
    if gpu().is_none() {
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("export").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let dir = fixture(&name);
        let ids = Golden::load(&dir).ids("input_ids");
        for format in BLOCKED {
            let packed_dir = pack_dir(
                &dir.join("export"),
                format,
                64 << 20,
                &format!("{name}-{format}"),
            );
            let packed = export(&packed_dir, WeightFormat::F32).unwrap();
            let on_load = export(&dir.join("export"), format).unwrap();
            let (l1, t1) = outputs_of(&packed, &ids);
            let (l2, t2) = outputs_of(&on_load, &ids);
            assert_eq!(t1, t2, "{name} {format}: greedy tokens");
            assert_eq!(
                l1, l2,
                "{name} {format}: logits of the packed and the on-load blocks"
            );
            let _ = std::fs::remove_dir_all(&packed_dir);
        }
    }
}

/// The export in `dir` loaded from memory, its weight files streamed in 4000-byte chunks.
fn streamed_export(dir: &Path) -> ShadowModel {
    let gpu = gpu().unwrap();
    let mut src = MemSource::new(dir.display().to_string());
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let format = shadowpeft::model::packed::declared("config.json", &cfg)
        .unwrap()
        .unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(f.path()).unwrap();
        if name.ends_with(".safetensors") {
            let mut s = SafetensorsStream::new(name.clone()).with_format(format);
            for c in bytes.chunks(4000) {
                s.push(gpu, c).unwrap();
            }
            src.insert_uploaded(name, s.finish().unwrap());
        } else {
            src.insert(name, bytes);
        }
    }
    pollster::block_on(ShadowModel::load_export(gpu, &src, &LoadOptions::default())).unwrap()
}

#[test]
fn a_packed_base_equals_quantising_on_load_attached() {
    if gpu().is_none() {
        return;
    }
    let gpu = gpu().unwrap();
    let format = WeightFormat::Q4;
    let base = pack_dir(&demo("base"), format, 64 << 20, "base-q4");
    let load = |b: &Path, w| {
        pollster::block_on(ShadowModel::load_adapter(
            gpu,
            &DirSource::open(b).unwrap(),
            &DirSource::open(demo("adapter")).unwrap(),
            None::<&DirSource>,
            Mode::Attached,
            &opts(w),
        ))
        .unwrap()
    };
    let packed = load(&base, WeightFormat::F32);
    assert_eq!(packed.weight_format(), format);
    let on_load = load(&demo("base"), format);
    let (l1, t1) = outputs(&packed);
    let (l2, t2) = outputs(&on_load);
    assert_eq!(t1, t2);
    assert_eq!(l1, l2);
    let _ = std::fs::remove_dir_all(&base);
}

/// Rewrites safetensors file `f` through `edit` of its (name, dtype, shape, bytes) list.
fn rewrite(
    f: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let bytes = std::fs::read(f).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut ts);
    let views: Vec<_> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    // The index describes the new file (its tensors are what is wrong, not its copy).
    let idx_file = f.parent().unwrap().join(INDEX);
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_file).unwrap()).unwrap();
    let name = f.file_name().unwrap().to_str().unwrap();
    idx["metadata"]["shards"][name] = serde_json::json!({
        "size": bytes.len(),
        "sha256": shadowpeft::model::shards::hex(&sha2::Sha256::digest(&bytes)),
    });
    std::fs::write(&idx_file, serde_json::to_vec(&idx).unwrap()).unwrap();
    std::fs::write(f, bytes).unwrap();
}

#[test]
fn corrupt_packs_name_the_file_and_the_tensor() {
    if gpu().is_none() {
        return;
    }
    let fresh = |tag: &str| pack_dir(&demo("export"), WeightFormat::Q4, 64 << 20, tag);
    let shard = |d: &Path| d.join("model-00001-of-00001.safetensors");
    let matrix = "model.layers.0.mlp.down_proj.weight";
    let err = |d: &Path| {
        export(d, WeightFormat::F32)
            .err()
            .expect("a corrupt pack is refused")
            .to_string()
    };

    // Scales missing from the shard: the index, which lists them, is the first to tell.
    let d = fresh("no-scales");
    let scale = format!("{matrix}_scale");
    rewrite(&shard(&d), |ts| ts.retain(|t| t.0 != scale));
    let e = err(&d);
    assert!(e.contains(INDEX) && e.contains(&scale), "{e}");
    // Missing from both: the shard that holds the blocks.
    let f = d.join(INDEX);
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    idx["weight_map"].as_object_mut().unwrap().remove(&scale);
    std::fs::write(&f, serde_json::to_vec(&idx).unwrap()).unwrap();
    let e = err(&d);
    assert!(
        e.contains("model-00001-of-00001.safetensors") && e.contains(&scale),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // The wrong number of blocks (a consistent file, a shape the model does not have).
    let d = fresh("blocks");
    rewrite(&shard(&d), |ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.0 == format!("{matrix}_packed"))
            .unwrap();
        t.2 = vec![t.2[0] * 2, t.2[1] / 2];
    });
    let e = err(&d);
    assert!(
        e.contains(&format!("{matrix}_packed")) && e.contains("expected"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // Scales of the wrong dtype.
    let d = fresh("scale-dtype");
    rewrite(&shard(&d), |ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.0 == format!("{matrix}_scale"))
            .unwrap();
        t.1 = safetensors::Dtype::BF16;
    });
    let e = err(&d);
    assert!(
        e.contains(&format!("{matrix}_scale")) && e.contains("F16"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // Shapes that disagree with the config.
    let d = fresh("config");
    let f = d.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(320);
    std::fs::write(&f, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let e = err(&d);
    assert!(
        e.contains("model-00001-of-00001.safetensors") && e.contains("_proj.weight"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // A truncated shard, read as a stream: the file and how far it got.
    let d = fresh("truncated");
    let bytes = std::fs::read(shard(&d)).unwrap();
    let mut s =
        SafetensorsStream::new("model-00001-of-00001.safetensors").with_format(WeightFormat::Q4);
    s.push(gpu().unwrap(), &bytes[..bytes.len() - 100]).unwrap();
    let e = s.finish().err().unwrap().to_string();
    assert!(
        e.contains("model-00001-of-00001.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // Streamed without a matrix's scales.
    rewrite(&shard(&d), |ts| {
        ts.retain(|t| t.0 != format!("{matrix}_scale"))
    });
    let bytes = std::fs::read(shard(&d)).unwrap();
    let mut s =
        SafetensorsStream::new("model-00001-of-00001.safetensors").with_format(WeightFormat::Q4);
    s.push(gpu().unwrap(), &bytes).unwrap();
    let e = s.finish().err().unwrap().to_string();
    assert!(e.contains(&format!("{matrix}_scale")), "{e}");
    let _ = std::fs::remove_dir_all(&d);

    // A shard whose size is not the index's (a partial copy).
    let d = fresh("size");
    let bytes = std::fs::read(shard(&d)).unwrap();
    std::fs::write(shard(&d), &bytes[..bytes.len() - 1]).unwrap();
    let e = err(&d);
    assert!(
        e.contains("model-00001-of-00001.safetensors") && e.contains("incomplete"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);

    // Packing a pack is refused.
    let d = fresh("twice");
    let w = pollster::block_on(Weights::load_hf(&DirSource::open(&d).unwrap())).unwrap();
    let e = pack(&w, WeightFormat::Q8, 1 << 20).unwrap_err().to_string();
    assert!(e.contains("packed as q4 already"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
