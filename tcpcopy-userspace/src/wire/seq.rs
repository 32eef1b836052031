//! TCP sequence numbers: 32 bits that wrap, so "before" and "after" are
//! decided by the signed distance between two of them (RFC 9293 §3.4),
//! never by comparing the integers.

/// A sequence (or acknowledgement, or timestamp) number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// `n` bytes further on.
    pub fn plus(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }
    /// `n` bytes before.
    pub fn minus(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n))
    }
    /// How far `self` lies after `earlier` (negative: before it).
    pub fn since(self, earlier: SeqNumber) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }
    /// The bytes from `earlier` up to `self`, counted forward (a number
    /// "before" `earlier` reads as almost 2^32).
    pub fn forward_from(self, earlier: SeqNumber) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
    /// Strictly after `other`.
    pub fn is_after(self, other: SeqNumber) -> bool {
        self.since(other) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::SeqNumber;

    #[test]
    fn comparisons_hold_across_the_wrap() {
        let near_end = SeqNumber(u32::MAX - 9);
        let wrapped = near_end.plus(20);
        assert_eq!(wrapped, SeqNumber(10));
        assert!(wrapped.is_after(near_end));
        assert!(!near_end.is_after(wrapped));
        assert_eq!(wrapped.since(near_end), 20);
        assert_eq!(near_end.since(wrapped), -20);
        assert_eq!(wrapped.minus(20), near_end);
        assert_eq!(wrapped.forward_from(near_end), 20);
        assert_eq!(near_end.forward_from(wrapped), u32::MAX - 19);
        assert!(!near_end.is_after(near_end));
    }
}
