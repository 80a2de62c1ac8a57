//! TEMPORARY stub with the agreed API; replaced by the real module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlgProtocol {
    Sip,
    H323,
    Rtsp,
    Dns,
    Ftp,
    Tftp,
}
impl AlgProtocol {
    pub const ALL: [AlgProtocol; 6] = [
        Self::Sip,
        Self::H323,
        Self::Rtsp,
        Self::Dns,
        Self::Ftp,
        Self::Tftp,
    ];
    pub const COUNT: usize = 6;
    pub fn name(self) -> &'static str {
        ["sip", "h323", "rtsp", "dns", "ftp", "tftp"][self as usize]
    }
    pub fn index(self) -> usize {
        self as usize
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AlgAction {
    #[default]
    Drop,
    Pass,
    Inspect,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AlgPolicy {
    a: [AlgAction; 6],
}
impl AlgPolicy {
    pub fn get(&self, p: AlgProtocol) -> AlgAction {
        self.a[p as usize]
    }
    pub fn set(&mut self, p: AlgProtocol, a: AlgAction) {
        self.a[p as usize] = a
    }
    pub fn with(mut self, p: AlgProtocol, a: AlgAction) -> Self {
        self.set(p, a);
        self
    }
    pub fn all(a: AlgAction) -> Self {
        AlgPolicy { a: [a; 6] }
    }
    pub fn is_all_pass(&self) -> bool {
        self.a.iter().all(|x| *x == AlgAction::Pass)
    }
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}
pub fn classify(t: Transport, sp: u16, dp: u16, _payload: &[u8]) -> Option<AlgProtocol> {
    let m = |p: u16| match (t, p) {
        (_, 5060) => Some(AlgProtocol::Sip),
        (Transport::Tcp, 21) => Some(AlgProtocol::Ftp),
        (_, 53) => Some(AlgProtocol::Dns),
        (Transport::Udp, 69) => Some(AlgProtocol::Tftp),
        (_, 554) => Some(AlgProtocol::Rtsp),
        (Transport::Tcp, 1720) => Some(AlgProtocol::H323),
        _ => None,
    };
    m(sp).or(m(dp))
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    pub protocol: AlgProtocol,
    pub field: Field,
    pub address: [u8; 4],
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    TextAddress,
}
impl Field {
    pub fn name(self) -> &'static str {
        "text_address"
    }
}
pub fn inspect(
    p: AlgProtocol,
    payload: &[u8],
    private: [u8; 4],
    _public: [u8; 4],
) -> Option<Finding> {
    let s = format!(
        "{}.{}.{}.{}",
        private[0], private[1], private[2], private[3]
    );
    payload
        .windows(s.len())
        .any(|w| w == s.as_bytes())
        .then_some(Finding {
            protocol: p,
            field: Field::TextAddress,
            address: private,
        })
}
