//! What a proxy's hooks return: [`Relay`] from `on_data`, [`Finish`] from `on_finish`.
//!
//! em-proxy encodes its decisions in Ruby return values (`data`, `nil`, `:async`,
//! `[data, [names]]`, `:close`, `:keep`); here each decision is an enum variant that
//! names its meaning. This module owns only the vocabulary, no behaviour: the hooks
//! themselves are installed through `session.rs`, and `core.rs` acts on what they return.

/// What `on_data` wants done with bytes from the client (em-proxy's return value of
/// `on_data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relay {
    /// Send these bytes to every live backend (em-proxy: return the data).
    All(Vec<u8>),
    /// From `on_data`: send the bytes it was given to every live backend, unchanged and
    /// without a copy — for a hook that only looks (a tap). From
    /// [`Session::relay_to_servers`](super::Session::relay_to_servers), where there are no
    /// bytes given, it sends nothing (like [`Relay::Drop`]). Ends a hold like `All`.
    Unchanged,
    /// Send these bytes to the named backends only; names that are not live are skipped
    /// (em-proxy: return `[data, [names]]`).
    To(Vec<u8>, Vec<String>),
    /// Send nothing: the hook answered the client itself or discarded the bytes
    /// (em-proxy: return `nil`). Ends a hold started by [`Relay::Later`].
    Drop,
    /// Send nothing now; the hook will relay later with
    /// [`Session::relay_to_servers`](super::Session::relay_to_servers), for example from
    /// a [`Session::defer`](super::Session::defer) callback (em-proxy: return `:async`).
    /// Until the next decision that is not `Later` (from `on_data` or
    /// `relay_to_servers`), the client's FIN is held back from the backends so that it
    /// cannot overtake the held bytes, and a [`Finish::WhenAllDone`] waits.
    /// The proxy itself keeps no bytes and keeps reading the client (a hook may wait for
    /// more of a message): what the hook holds, it holds in its own state and must bound.
    Later,
}

impl Relay {
    /// [`Relay::To`] with the names given as string slices.
    pub fn to(data: impl Into<Vec<u8>>, names: &[&str]) -> Relay {
        Relay::To(data.into(), names.iter().map(|n| (*n).to_owned()).collect())
    }
}

/// What `on_finish` wants done with the client when a backend is gone (em-proxy's return
/// value of `on_finish`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Finish {
    /// Close the client once everything queued for it is written (em-proxy: `:close`).
    Close,
    /// Keep the client open, even if no backend is left (em-proxy: `:keep`).
    Keep,
    /// Close the client once no primary backend is left (em-proxy: `nil`), as soon as
    /// no bytes are held ([`Relay::Later`]) and no deferred job or timer is waiting.
    /// Shadow backends never hold a client open; a client that only ever had shadows
    /// closes when the last one is gone.
    #[default]
    WhenAllDone,
}
