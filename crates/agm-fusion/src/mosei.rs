//! The CMU-MOSEI model: the UMONS "MAT" text+audio transformer as the AGM reference builds it.

use agm_core::{ForwardOpts, ModalitySet, ModelOutput, MultimodalModel, ParamGroups};
use candle_core::{DType, Device, Result, Tensor, Var, D};

use crate::ave::DropoutSites;
use crate::{Linear, Lstm, ParamBuilder, ParamInit, ParamRole, ParamStore};

/// Hyper-parameters of the MAT model (`MOSEI_Config` of the reference).
#[derive(Clone, Debug, PartialEq)]
pub struct MoseiMatConfig {
    /// Rows of the word embedding (`len(token_to_ix)`).
    pub vocab_size: usize,
    /// Width of the word embedding (GloVe's 300).
    pub word_embed_size: usize,
    /// Width of both streams.
    pub hidden_size: usize,
    /// Attention heads; must divide `hidden_size`.
    pub multi_head: usize,
    /// Width of the feed-forward blocks and of the `AttFlat` MLPs.
    pub ff_size: usize,
    /// Dropout probability at every site, in training mode only.
    pub dropout: f64,
    /// Number of encoder blocks.
    pub layers: usize,
    /// Text length; also the glimpse count of the text `AttFlat` in blocks 0 to `layers − 2`,
    /// which is why the model only accepts this length.
    pub lang_seq_len: usize,
    /// Audio length, fixed the same way.
    pub audio_seq_len: usize,
    /// Features per audio frame (mel bins).
    pub audio_feat_size: usize,
    /// Classes of the logits.
    pub num_classes: usize,
}

impl MoseiMatConfig {
    /// The reference's configuration (binary sentiment): 6 blocks of width 512, 4 heads, feed
    /// forward 1024, dropout 0.1, 300-d word embeddings, 60 tokens and 60 mel frames of 80 bins.
    /// The model has 41,237,596 + 300·`vocab_size` parameters.
    pub fn paper(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            word_embed_size: 300,
            hidden_size: 512,
            multi_head: 4,
            ff_size: 1024,
            dropout: 0.1,
            layers: 6,
            lang_seq_len: 60,
            audio_seq_len: 60,
            audio_feat_size: 80,
            num_classes: 2,
        }
    }
}

/// The reference's own `LayerNorm`: `a·(x − μ)/(σ + eps) + b` with the unbiased (N − 1)
/// standard deviation and eps 1e-6 added to σ, unlike `nn.LayerNorm`.
struct MatLayerNorm {
    a_2: Var,
    b_2: Var,
}

impl MatLayerNorm {
    const EPS: f64 = 1e-6;

    fn new(pb: &ParamBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            a_2: pb.param(dim, "a_2", ParamInit::Const(1.0))?,
            b_2: pb.param(dim, "b_2", ParamInit::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(D::Minus1)? as f64;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let std = (centred.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0))?.sqrt()?;
        centred
            .broadcast_div(&(std + Self::EPS)?)?
            .broadcast_mul(self.a_2.as_tensor())?
            .broadcast_add(self.b_2.as_tensor())
    }
}

/// `MLP`: `linear(dropout(relu(fc.linear(x))))`.
struct Mlp {
    fc: Linear,
    linear: Linear,
}

impl Mlp {
    fn new(pb: &ParamBuilder, in_dim: usize, mid: usize, out: usize) -> Result<Self> {
        Ok(Self {
            fc: Linear::new(&pb.pp("fc").pp("linear"), in_dim, mid, true)?,
            linear: Linear::new(&pb.pp("linear"), mid, out, true)?,
        })
    }

    fn forward(&self, x: &Tensor, drop: &DropoutSites) -> Result<Tensor> {
        self.linear.forward(&drop.apply(&self.fc.forward(x)?.relu()?)?)
    }
}

/// Sets the positions where `mask` (u8 `[B, L]`, 1 = padding) is set to −1e9 in `scores`
/// `[B, …, L]`, as `masked_fill` does (a set value, not an added one).
fn mask_fill(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let dims = scores.dims();
    let mut mshape = vec![1; dims.len()];
    mshape[0] = dims[0];
    mshape[dims.len() - 1] = dims[dims.len() - 1];
    let m = mask.reshape(mshape)?.broadcast_as(dims)?.contiguous()?;
    m.where_cond(&scores.zeros_like()?.affine(1.0, -1e9)?, scores)
}

/// `MHAtt`: multi-head scaled dot-product attention with dropout on the attention map.
struct MhAtt {
    linear_v: Linear,
    linear_k: Linear,
    linear_q: Linear,
    linear_merge: Linear,
    heads: usize,
}

impl MhAtt {
    fn new(pb: &ParamBuilder, hidden: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            linear_v: Linear::new(&pb.pp("linear_v"), hidden, hidden, true)?,
            linear_k: Linear::new(&pb.pp("linear_k"), hidden, hidden, true)?,
            linear_q: Linear::new(&pb.pp("linear_q"), hidden, hidden, true)?,
            linear_merge: Linear::new(&pb.pp("linear_merge"), hidden, hidden, true)?,
            heads,
        })
    }

    /// `[B, L, hidden]` -> `[B, heads, L, hidden/heads]`.
    fn split(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        layer.forward(x)?.reshape((b, l, self.heads, h / self.heads))?.transpose(1, 2)?.contiguous()
    }

    fn forward(
        &self,
        v: &Tensor,
        k: &Tensor,
        q: &Tensor,
        mask: Option<&Tensor>,
        drop: &DropoutSites,
    ) -> Result<Tensor> {
        let (b, lq, hidden) = q.dims3()?;
        let v = self.split(&self.linear_v, v)?;
        let k = self.split(&self.linear_k, k)?;
        let q = self.split(&self.linear_q, q)?;
        let d_k = (hidden / self.heads) as f64;
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / d_k.sqrt())?;
        let scores = match mask {
            Some(m) => mask_fill(&scores, m)?,
            None => scores,
        };
        let att = drop.apply(&agm_kernels::softmax_last_dim(&scores)?)?;
        let atted = att.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, lq, hidden))?;
        self.linear_merge.forward(&atted)
    }
}

/// `AttFlat`: `g` attention glimpses over the positions (softmax over the sequence), each a
/// weighted sum of `x`; with `merge`, the glimpses are concatenated and projected to 2·hidden.
struct AttFlat {
    mlp: Mlp,
    linear_merge: Option<Linear>,
}

impl AttFlat {
    fn new(pb: &ParamBuilder, cfg: &MoseiMatConfig, glimpses: usize, merge: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear_merge =
            if merge { Some(Linear::new(&pb.pp("linear_merge"), h * glimpses, 2 * h, true)?) } else { None };
        Ok(Self { mlp: Mlp::new(&pb.pp("mlp"), h, cfg.ff_size, glimpses)?, linear_merge })
    }

    /// `[B, L, H]` -> `[B, g, H]`, or `[B, 2H]` when merging.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, drop: &DropoutSites) -> Result<Tensor> {
        let att = self.mlp.forward(x, drop)?.transpose(1, 2)?.contiguous()?;
        let att = match mask {
            Some(m) => mask_fill(&att, m)?,
            None => att,
        };
        let flat = agm_kernels::softmax_last_dim(&att)?.matmul(x)?;
        match &self.linear_merge {
            Some(l) => l.forward(&flat.flatten_from(1)?),
            None => Ok(flat),
        }
    }
}

/// `SA`: self-attention and feed-forward, each with dropout, residual and `LayerNorm`.
struct Sa {
    mhatt: MhAtt,
    ffn: Mlp,
    norm1: MatLayerNorm,
    norm2: MatLayerNorm,
}

impl Sa {
    fn new(pb: &ParamBuilder, cfg: &MoseiMatConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            mhatt: MhAtt::new(&pb.pp("mhatt"), h, cfg.multi_head)?,
            ffn: Mlp::new(&pb.pp("ffn").pp("mlp"), h, cfg.ff_size, h)?,
            norm1: MatLayerNorm::new(&pb.pp("norm1"), h)?,
            norm2: MatLayerNorm::new(&pb.pp("norm2"), h)?,
        })
    }

    fn forward(&self, y: &Tensor, mask: Option<&Tensor>, drop: &DropoutSites) -> Result<Tensor> {
        let y = self.norm1.forward(&(y + drop.apply(&self.mhatt.forward(y, y, y, mask, drop)?)?)?)?;
        self.norm2.forward(&(&y + drop.apply(&self.ffn.forward(&y, drop)?)?)?)
    }
}

/// `SGA`: self-attention on `x`, then attention from `x` to `y`, then feed-forward.
struct Sga {
    mhatt1: MhAtt,
    mhatt2: MhAtt,
    ffn: Mlp,
    norm1: MatLayerNorm,
    norm2: MatLayerNorm,
    norm3: MatLayerNorm,
}

impl Sga {
    fn new(pb: &ParamBuilder, cfg: &MoseiMatConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            mhatt1: MhAtt::new(&pb.pp("mhatt1"), h, cfg.multi_head)?,
            mhatt2: MhAtt::new(&pb.pp("mhatt2"), h, cfg.multi_head)?,
            ffn: Mlp::new(&pb.pp("ffn").pp("mlp"), h, cfg.ff_size, h)?,
            norm1: MatLayerNorm::new(&pb.pp("norm1"), h)?,
            norm2: MatLayerNorm::new(&pb.pp("norm2"), h)?,
            norm3: MatLayerNorm::new(&pb.pp("norm3"), h)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        y: &Tensor,
        x_mask: Option<&Tensor>,
        y_mask: Option<&Tensor>,
        drop: &DropoutSites,
    ) -> Result<Tensor> {
        let x = self.norm1.forward(&(x + drop.apply(&self.mhatt1.forward(x, x, x, x_mask, drop)?)?)?)?;
        let x = self.norm2.forward(&(&x + drop.apply(&self.mhatt2.forward(y, y, &x, y_mask, drop)?)?)?)?;
        self.norm3.forward(&(&x + drop.apply(&self.ffn.forward(&x, drop)?)?)?)
    }
}

/// The flattening tail of every block but the last.
struct BlockFlat {
    att_lang: AttFlat,
    att_audio: AttFlat,
    norm_l: MatLayerNorm,
    norm_i: MatLayerNorm,
}

/// `Block`: `SA` on the text, `SGA` on the audio guided by the text, outer residuals, then (all
/// but the last block) `x = LN(x + drop(AttFlat_L(x)))` on both streams.
struct Block {
    sa1: Sa,
    sa3: Sga,
    flat: Option<BlockFlat>,
}

impl Block {
    fn new(text: &ParamBuilder, audio: &ParamBuilder, cfg: &MoseiMatConfig, last: bool) -> Result<Self> {
        let flat = if last {
            None
        } else {
            Some(BlockFlat {
                att_lang: AttFlat::new(&text.pp("att_lang"), cfg, cfg.lang_seq_len, false)?,
                att_audio: AttFlat::new(&audio.pp("att_audio"), cfg, cfg.audio_seq_len, false)?,
                norm_l: MatLayerNorm::new(&text.pp("norm_l"), cfg.hidden_size)?,
                norm_i: MatLayerNorm::new(&audio.pp("norm_i"), cfg.hidden_size)?,
            })
        };
        Ok(Self { sa1: Sa::new(&text.pp("sa1"), cfg)?, sa3: Sga::new(&audio.pp("sa3"), cfg)?, flat })
    }

    fn forward(
        &self,
        x: &Tensor,
        x_mask: Option<&Tensor>,
        y: &Tensor,
        y_mask: Option<&Tensor>,
        drop: &DropoutSites,
    ) -> Result<(Tensor, Tensor)> {
        let ax = self.sa1.forward(x, x_mask, drop)?;
        let ay = self.sa3.forward(y, x, y_mask, x_mask, drop)?;
        let x = (ax + x)?;
        let y = (ay + y)?;
        let Some(f) = &self.flat else { return Ok((x, y)) };
        let ax = f.att_lang.forward(&x, x_mask, drop)?;
        let ay = f.att_audio.forward(&y, y_mask, drop)?;
        Ok((f.norm_l.forward(&(&x + drop.apply(&ax)?)?)?, f.norm_i.forward(&(&y + drop.apply(&ay)?)?)?))
    }
}

/// The CMU-MOSEI network of the AGM reference: `Model_LA` from `model/MOSEI_net.py` (the UMONS
/// MAT model), with the reference's variable names (`embedding.weight`, `lstm_x.weight_ih_l0`,
/// `adapter.weight`, `enc_list.{i}.sa1.mhatt.linear_q.weight`, `enc_list.{i}.sa3.norm2.a_2`,
/// `attflat_lang.linear_merge.weight`, `proj_norm.a_2`, `proj.weight`, ...) and PyTorch's default
/// initialisation. 41,237,596 + 300·V parameters with [`MoseiMatConfig::paper`].
///
/// Flow: token ids -> `Embedding(V, 300)` -> `LSTM(300 → 512)` = text stream x; mel frames ->
/// `adapter` `Linear(80, 512)` = audio stream y; 6 `Block`s (the padding masks go to block 0
/// only); `AttFlat` glimpse-1 with merge on each stream (no masks); `proj(LN(x + y))` over 2
/// classes. Attention has 4 heads of 128, masked scores are set to −1e9 and the attention map
/// takes dropout; dropout 0.1 everywhere the reference puts it, in training mode only. The
/// reference's `LayerNorm` divides by the unbiased std + 1e-6.
///
/// The embedding starts `N(0, 1)` (PyTorch's default); the reference copies GloVe vectors into
/// it, which a run does from the dataset's `train_glove.npy` (the preset names [`Self::EMBEDDING`] as
/// its text input's embedding), and [`MoseiMatNet::set_embedding`] does directly.
///
/// Inputs, in modality order: text token ids `[B, 60]` as U32, I64 or F32 (0 = padding), audio
/// `[B, 60, 80]` float (all-zero rows = padding). The lengths are fixed because each `AttFlat`
/// of blocks 0–4 produces one glimpse per position and adds them back to the stream. The padding
/// masks always come from the original inputs: an absent text becomes token id 0 (an embedding
/// row, not a zero vector) and an absent audio zeros, but both keep their real masks (quirk Q10).
///
/// Outputs: `logits` `[B, 2]`, `fused_feature` `LN(x + y)` `[B, 1024]` (the reference's
/// "feature" mode), `encoder_features` the two flattened streams `[B, 1024]` (text, audio).
///
/// Parameter groups: text = `embedding`, `lstm_x` and the x stream (`enc_list.*.sa1`,
/// `att_lang`, `norm_l`, `attflat_lang`); audio = `adapter` and the y stream (`enc_list.*.sa3`,
/// `att_audio`, `norm_i`, `attflat_img`); shared = `proj_norm`, `proj` (the head weight).
///
/// The reference trains with `CrossEntropyLoss(reduction="sum")` (mean in validation): the
/// run's `loss_reduction`, MOSEI's dataset settings set it.
pub struct MoseiMatNet {
    cfg: MoseiMatConfig,
    modalities: ModalitySet,
    store: ParamStore,
    embedding: Var,
    lstm_x: Lstm,
    adapter: Linear,
    enc_list: Vec<Block>,
    attflat_lang: AttFlat,
    attflat_img: AttFlat,
    proj_norm: MatLayerNorm,
    proj: Linear,
}

impl MoseiMatNet {
    /// The word-embedding variable.
    pub const EMBEDDING: &'static str = "embedding.weight";

    /// The network of `cfg` with every variable drawn from `seed`. Errs when `multi_head` does not
    /// divide `hidden_size`.
    pub fn new(cfg: &MoseiMatConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        if cfg.hidden_size.checked_rem(cfg.multi_head) != Some(0) {
            candle_core::bail!("hidden size {} is not a multiple of {} heads", cfg.hidden_size, cfg.multi_head);
        }
        let store = ParamStore::new();
        let root = store.builder(seed, dtype, device);
        let text = root.with_role(ParamRole::Modality(0));
        let audio = root.with_role(ParamRole::Modality(1));
        let shared = root.with_role(ParamRole::Shared);
        let h = cfg.hidden_size;
        let embedding = text.param(
            (cfg.vocab_size, cfg.word_embed_size),
            Self::EMBEDDING,
            ParamInit::Normal { mean: 0.0, std: 1.0 },
        )?;
        let lstm_x = Lstm::new(&text.pp("lstm_x"), cfg.word_embed_size, h, false)?;
        let adapter = Linear::new(&audio.pp("adapter"), cfg.audio_feat_size, h, true)?;
        let enc_list = (0..cfg.layers)
            .map(|i| {
                let name = format!("enc_list.{i}");
                Block::new(&text.pp(&name), &audio.pp(&name), cfg, i + 1 == cfg.layers)
            })
            .collect::<Result<Vec<_>>>()?;
        let attflat_img = AttFlat::new(&audio.pp("attflat_img"), cfg, 1, true)?;
        let attflat_lang = AttFlat::new(&text.pp("attflat_lang"), cfg, 1, true)?;
        let proj_norm = MatLayerNorm::new(&shared.pp("proj_norm"), 2 * h)?;
        let proj = Linear::new(&shared.pp("proj"), 2 * h, cfg.num_classes, true)?;
        store.set_head_weight("proj.weight");
        Ok(Self {
            cfg: cfg.clone(),
            modalities: ModalitySet::new(["text", "audio"]),
            store,
            embedding,
            lstm_x,
            adapter,
            enc_list,
            attflat_lang,
            attflat_img,
            proj_norm,
            proj,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &MoseiMatConfig {
        &self.cfg
    }

    /// The store that holds every variable of the network.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// Loads every variable by name (a checkpoint or the reference's initial values).
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.store.load(tensors)
    }

    /// Replaces the word embedding by pretrained vectors `[V, word_embed_size]` (the reference's
    /// GloVe matrix, row 0 included).
    pub fn set_embedding(&self, vectors: &Tensor) -> Result<()> {
        if vectors.dims() != self.embedding.dims() {
            candle_core::bail!("embedding of shape {:?}, expected {:?}", vectors.dims(), self.embedding.dims());
        }
        self.embedding.set(&vectors.to_dtype(self.embedding.dtype())?.to_device(self.embedding.device())?)
    }

    /// The padding masks of the reference's `make_mask`, u8 `[B, L]` with 1 at padding: text
    /// positions whose token id is 0, audio frames whose features are all zero.
    pub fn masks(text: &Tensor, audio: &Tensor) -> Result<(Tensor, Tensor)> {
        let ids = token_ids(text)?;
        let text_mask = ids.eq(&ids.zeros_like()?)?;
        let energy = audio.abs()?.sum(D::Minus1)?;
        let audio_mask = energy.eq(&energy.zeros_like()?)?;
        Ok((text_mask, audio_mask))
    }

    /// One pass with explicit padding masks (u8 `[B, L]`, 1 = padding), whatever the inputs
    /// hold: [`MultimodalModel::forward`] zeroes absent inputs and passes the masks of the
    /// original ones here.
    pub fn forward_masked(
        &self,
        text: &Tensor,
        audio: &Tensor,
        text_mask: &Tensor,
        audio_mask: &Tensor,
        train: bool,
        dropout_seed: u64,
    ) -> Result<ModelOutput> {
        let ids = token_ids(text)?;
        let (b, lt) = ids.dims2()?;
        let (ba, la, fa) = audio.dims3()?;
        if ba != b || lt != self.cfg.lang_seq_len || la != self.cfg.audio_seq_len || fa != self.cfg.audio_feat_size {
            candle_core::bail!(
                "MOSEI inputs must be text [B, {}] and audio [B, {}, {}], got {:?} and {:?}",
                self.cfg.lang_seq_len,
                self.cfg.audio_seq_len,
                self.cfg.audio_feat_size,
                text.dims(),
                audio.dims()
            );
        }
        let drop = DropoutSites::new(self.cfg.dropout, train, dropout_seed);
        let emb = self.embedding.as_tensor().index_select(&ids.flatten_all()?, 0)?.reshape((b, lt, ()))?;
        let mut x = self.lstm_x.forward(&emb)?;
        let mut y = self.adapter.forward(&audio.to_dtype(self.embedding.dtype())?)?;
        for (i, block) in self.enc_list.iter().enumerate() {
            // Only the first block sees the padding masks, as in the reference.
            let (xm, ym) = if i == 0 { (Some(text_mask), Some(audio_mask)) } else { (None, None) };
            (x, y) = block.forward(&x, xm, &y, ym, &drop)?;
        }
        let x = self.attflat_lang.forward(&x, None, &drop)?;
        let y = self.attflat_img.forward(&y, None, &drop)?;
        let feat = self.proj_norm.forward(&(&x + &y)?)?;
        let logits = self.proj.forward(&feat)?;
        Ok(ModelOutput::new(logits, feat, vec![x, y]))
    }
}

/// Token ids as U32 for the embedding lookup (the batch may carry them as U32, I64 or floats).
fn token_ids(text: &Tensor) -> Result<Tensor> {
    match text.dtype() {
        DType::U32 => Ok(text.clone()),
        DType::I64 | DType::U8 | DType::F32 | DType::F64 | DType::F16 | DType::BF16 => text.to_dtype(DType::U32),
        other => candle_core::bail!("token ids of dtype {other:?} are not supported"),
    }
}

impl MultimodalModel for MoseiMatNet {
    fn modalities(&self) -> &ModalitySet {
        &self.modalities
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn forward(&self, inputs: &[Tensor], opts: &ForwardOpts) -> Result<ModelOutput> {
        let [text, audio] = inputs else {
            candle_core::bail!("the MOSEI model takes text and audio inputs, got {} tensors", inputs.len());
        };
        // Masks from the original inputs, before any zeroing (quirk Q10).
        let (text_mask, audio_mask) = Self::masks(text, audio)?;
        let text = if opts.present.contains(0) { text.clone() } else { text.zeros_like()? };
        let audio = if opts.present.contains(1) { audio.clone() } else { audio.zeros_like()? };
        self.forward_masked(&text, &audio, &text_mask, &audio_mask, opts.train, opts.dropout_seed)
    }

    fn param_groups(&self) -> ParamGroups {
        self.store.groups(2)
    }
}
