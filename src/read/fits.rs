//! Where the second HDU of a FITS file begins, read from the primary header's bytes.
//!
//! Opening a FITS extension (`astropy.io.fits.getheader(path, ext=1)`) reads the primary
//! header, then seeks past the primary data unit to the next header: two dependent random
//! reads, each a round trip or three. The seek target follows from a few mandatory cards of
//! the first header (FITS 4.0, sections 4.4.1 and 4.4.1.2), so the read path can start
//! fetching the next header as soon as the first one has arrived, before it is asked for.
//!
//! This is a hint, never a source of bytes: a wrong or missing answer costs at most one small
//! fetch nobody reads. So the parser is strict where a mistake would be likely (the file must
//! begin with `SIMPLE  =` and a true value, every card must be printable ASCII, the mandatory
//! values must be valid and not contradict themselves) and gives up rather than guess.
//!
//! Pure functions over bytes; no state, no locks.

/// A FITS logical record: headers and data units are padded to a multiple of it.
pub(crate) const RECORD: u64 = 2880;
const CARD: usize = 80;
/// Headers longer than this are not looked at (real primary headers are a few records; the
/// read path looks only at the bytes of the file's first block anyway).
const MAX_HEADER: usize = 1 << 20;
/// FITS allows at most 999 axes.
const MAX_NAXIS: u64 = 999;

/// What the first bytes of a file say about its next HDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Primary {
    /// Not a FITS file, or a header this parser does not trust: do nothing.
    Unknown,
    /// A FITS primary header whose `END` card is not among the bytes given yet.
    NeedMore,
    /// The primary header ends at `header_len`; the next HDU, if the file is long enough to
    /// hold one, begins at `next`.
    Header { header_len: u64, next: u64 },
}

/// Parses the primary header from `bytes`, the first bytes of a file (any prefix of it).
pub(crate) fn primary(bytes: &[u8]) -> Primary {
    const START: &[u8] = b"SIMPLE  = ";
    let n = bytes.len().min(START.len());
    if bytes[..n] != START[..n] {
        return Primary::Unknown;
    }
    let mut cards = Cards::default();
    let limit = bytes.len().min(MAX_HEADER);
    let mut at = 0;
    while at + CARD <= limit {
        let card = &bytes[at..at + CARD];
        let first = at == 0;
        at += CARD;
        if !card.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
            return Primary::Unknown;
        }
        let key = card[..8].trim_ascii_end();
        if first {
            // Fixed by the standard: the keyword, then "= " in columns 9-10, then a logical.
            if key != b"SIMPLE" || &card[8..10] != b"= " || value(card) != Some(b"T".as_slice()) {
                return Primary::Unknown;
            }
            continue;
        }
        if key == b"END" {
            if !card[8..].iter().all(|&b| b == b' ') {
                return Primary::Unknown;
            }
            return cards.finish(at as u64);
        }
        if &card[8..10] != b"= " {
            // COMMENT, HISTORY, blank and other commentary cards carry no value.
            continue;
        }
        if cards.take(key, value(card)).is_err() {
            return Primary::Unknown;
        }
    }
    if bytes.len() >= MAX_HEADER { Primary::Unknown } else { Primary::NeedMore }
}

/// The value field of a card with `= ` in columns 9-10: columns 11-80 up to a comment,
/// trimmed. A string value is not parsed (no mandatory card this parser reads has one).
fn value(card: &[u8]) -> Option<&[u8]> {
    let field = &card[10..];
    let end = field.iter().position(|&b| b == b'/').unwrap_or(field.len());
    let v = field[..end].trim_ascii();
    (!v.is_empty()).then_some(v)
}

fn integer(v: Option<&[u8]>) -> Result<i64, ()> {
    let s = std::str::from_utf8(v.ok_or(())?).map_err(|_| ())?;
    s.parse::<i64>().map_err(|_| ())
}

/// The mandatory values seen so far. Each may appear once; a second, different value makes
/// the header one nobody should guess about.
#[derive(Default)]
struct Cards {
    bitpix: Option<i64>,
    naxis: Option<u64>,
    /// `NAXISn` values by `n - 1`, as far as seen.
    axes: Vec<Option<u64>>,
    pcount: Option<u64>,
    gcount: Option<u64>,
    groups: Option<bool>,
}

fn set<T: PartialEq + Copy>(slot: &mut Option<T>, v: T) -> Result<(), ()> {
    match slot {
        Some(old) if *old != v => Err(()),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

fn count(v: Option<&[u8]>) -> Result<u64, ()> {
    u64::try_from(integer(v)?).map_err(|_| ())
}

impl Cards {
    fn take(&mut self, key: &[u8], v: Option<&[u8]>) -> Result<(), ()> {
        match key {
            b"BITPIX" => {
                let b = integer(v)?;
                if ![8, 16, 32, 64, -32, -64].contains(&b) {
                    return Err(());
                }
                set(&mut self.bitpix, b)
            }
            b"NAXIS" => {
                let n = count(v)?;
                if n > MAX_NAXIS {
                    return Err(());
                }
                set(&mut self.naxis, n)
            }
            b"PCOUNT" => set(&mut self.pcount, count(v)?),
            b"GCOUNT" => set(&mut self.gcount, count(v)?),
            b"GROUPS" => match v {
                Some(b"T") => set(&mut self.groups, true),
                Some(b"F") => set(&mut self.groups, false),
                _ => Err(()),
            },
            _ => {
                let Some(digits) = key.strip_prefix(b"NAXIS") else { return Ok(()) };
                let Ok(n) = std::str::from_utf8(digits).map_err(|_| ()).and_then(|d| d.parse::<u64>().map_err(|_| ()))
                else {
                    // Some other keyword that starts with NAXIS: not one of ours.
                    return Ok(());
                };
                if n == 0 || n > MAX_NAXIS || digits.starts_with(b"0") {
                    return Err(());
                }
                let len = count(v)?;
                let i = (n - 1) as usize;
                if self.axes.len() <= i {
                    self.axes.resize(i + 1, None);
                }
                set(&mut self.axes[i], len)
            }
        }
    }

    /// The layout once `END` ends the header after `header_bytes` bytes.
    fn finish(&self, header_bytes: u64) -> Primary {
        self.layout(header_bytes).map_or(Primary::Unknown, |(header_len, next)| Primary::Header { header_len, next })
    }

    fn layout(&self, header_bytes: u64) -> Option<(u64, u64)> {
        let bitpix = self.bitpix?;
        let naxis = self.naxis?;
        let header_len = header_bytes.div_ceil(RECORD).checked_mul(RECORD)?;
        // FITS 4.0 eq. 2 (and 4 for random groups): |BITPIX| × GCOUNT × (PCOUNT + ΠNAXISn)
        // bits; no data at all when NAXIS = 0. A primary header without PCOUNT/GCOUNT has
        // 0 and 1.
        let data_bits = if naxis == 0 {
            0
        } else {
            let dims = self.axes.get(..naxis as usize)?;
            if self.axes.len() > naxis as usize && self.axes[naxis as usize..].iter().any(Option::is_some) {
                // NAXISn beyond NAXIS: the header contradicts itself.
                return None;
            }
            let mut dims: Vec<u64> = dims.iter().copied().collect::<Option<Vec<u64>>>()?;
            if self.groups == Some(true) && dims.first() == Some(&0) {
                // Random groups: NAXIS1 = 0 marks the layout and is not a dimension.
                dims.remove(0);
            }
            let product = dims.iter().try_fold(1u64, |p, &d| p.checked_mul(d))?;
            let elements = product.checked_add(self.pcount.unwrap_or(0))?;
            elements.checked_mul(self.gcount.unwrap_or(1))?.checked_mul(bitpix.unsigned_abs())?
        };
        let data_len = (data_bits / 8).div_ceil(RECORD).checked_mul(RECORD)?;
        Some((header_len, header_len.checked_add(data_len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(text: &str) -> String {
        assert!(text.len() <= CARD, "card too long: {text}");
        format!("{text:<80}")
    }

    fn kv(key: &str, value: &str) -> String {
        card(&format!("{key:<8}= {value:>20}"))
    }

    fn header(cards: &[String]) -> Vec<u8> {
        let mut h: String = cards.concat();
        h.push_str(&card("END"));
        while !h.len().is_multiple_of(RECORD as usize) {
            h.push(' ');
        }
        h.into_bytes()
    }

    /// A primary header as HST's calibration pipeline writes one (abridged), with comments,
    /// string values holding slashes, HISTORY and blank cards, over two records.
    fn hst_like(naxis: &[u64], bitpix: i64) -> Vec<u8> {
        let mut cards = vec![
            card("SIMPLE  =                    T / conforms to FITS standard"),
            card(&format!("BITPIX  = {bitpix:>20} / array data type")),
            card(&format!("NAXIS   = {:>20} / number of array dimensions", naxis.len())),
        ];
        for (i, n) in naxis.iter().enumerate() {
            cards.push(card(&format!("NAXIS{:<3}= {n:>20}", i + 1)));
        }
        cards.push(card("EXTEND  =                    T / FITS dataset may contain extensions"));
        cards.push(card("ORIGIN  = 'HSTIO/CFITSIO March 2010' / FITS file originator"));
        cards.push(card("DATE    = '2024-05-17' / date this file was written (yyyy-mm-dd)"));
        cards.push(card("FILENAME= 'ieyt01a1q_flt.fits' / name of file"));
        cards.push(card("ROOTNAME= 'ieyt01a1q                         ' / rootname of the observation set"));
        cards.push(card(""));
        cards.push(card("              / FITS FILE DATA STRUCTURE"));
        cards.push(card("NEXTEND =                    3 / Number of standard extensions"));
        cards.push(card("HISTORY   NAXIS2 = 99 in a history card is not a value"));
        cards.push(card("COMMENT = 'a commentary card that looks like a value'"));
        cards.push(card("EXPTIME =                 1234.5 / exposure duration (seconds)--calculated"));
        for i in 0..30 {
            cards.push(kv(&format!("KEY{i}"), &format!("{}", i * 7)));
        }
        header(&cards)
    }

    #[test]
    fn a_real_primary_header_gives_the_next_hdu() {
        let h = hst_like(&[4096, 2051], 16);
        assert_eq!(h.len(), 2 * RECORD as usize);
        let data = (4096u64 * 2051 * 2).div_ceil(RECORD) * RECORD;
        assert_eq!(primary(&h), Primary::Header { header_len: 2 * RECORD, next: 2 * RECORD + data });
    }

    #[test]
    fn a_header_with_no_data_is_followed_at_once() {
        // HST's primary HDUs: NAXIS = 0, the science arrays are in the extensions.
        let h = hst_like(&[], 16);
        assert_eq!(primary(&h), Primary::Header { header_len: 2 * RECORD, next: 2 * RECORD });
    }

    #[test]
    fn negative_bitpix_counts_its_magnitude() {
        let h = hst_like(&[100, 10], -64);
        let data = (100u64 * 10 * 8).div_ceil(RECORD) * RECORD;
        assert_eq!(primary(&h), Primary::Header { header_len: 2 * RECORD, next: 2 * RECORD + data });
        let h = hst_like(&[2880], -32);
        assert_eq!(primary(&h), Primary::Header { header_len: 2 * RECORD, next: 2 * RECORD + 4 * RECORD });
    }

    #[test]
    fn pcount_and_gcount_scale_the_data() {
        // Random groups: NAXIS1 = 0 is not a dimension; each of GCOUNT groups holds PCOUNT
        // parameters and the array.
        let h = header(&[
            kv("SIMPLE", "T"),
            kv("BITPIX", "-32"),
            kv("NAXIS", "3"),
            kv("NAXIS1", "0"),
            kv("NAXIS2", "3"),
            kv("NAXIS3", "4"),
            kv("GROUPS", "T"),
            kv("PCOUNT", "5"),
            kv("GCOUNT", "100"),
        ]);
        let bytes = 4 * 100 * (5 + 3 * 4);
        let data = (bytes as u64).div_ceil(RECORD) * RECORD;
        assert_eq!(primary(&h), Primary::Header { header_len: RECORD, next: RECORD + data });
        // NAXIS1 = 0 without GROUPS: an empty array, no data.
        let h = header(&[kv("SIMPLE", "T"), kv("BITPIX", "8"), kv("NAXIS", "2"), kv("NAXIS1", "0"), kv("NAXIS2", "7")]);
        assert_eq!(primary(&h), Primary::Header { header_len: RECORD, next: RECORD });
    }

    #[test]
    fn free_format_values_and_signs_are_read() {
        let h = header(&[
            card("SIMPLE  = T"),
            card("BITPIX  = +8 / free format"),
            card("NAXIS   = 1"),
            card("NAXIS1  = 5761"),
        ]);
        assert_eq!(primary(&h), Primary::Header { header_len: RECORD, next: RECORD + 3 * RECORD });
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let h = hst_like(&[10, 10], 8);
        let end_card = h.len() - RECORD as usize + 80 * 10;
        for n in [0, 1, 79, 80, 2879, 2880, 2880 + 81] {
            assert!(n < end_card);
            assert_eq!(primary(&h[..n]), Primary::NeedMore, "prefix of {n} bytes");
        }
        // The END card is enough; the padding after it need not have arrived.
        let end = h.windows(80).position(|w| w.starts_with(b"END     ")).expect("END") + 80;
        assert!(matches!(primary(&h[..end]), Primary::Header { .. }));
        assert_eq!(primary(&h[..end - 1]), Primary::NeedMore);
    }

    #[test]
    fn files_that_are_not_fits_are_unknown() {
        assert_eq!(primary(b"\x89PNG\r\n\x1a\n"), Primary::Unknown);
        assert_eq!(primary(&[0u8; 4096]), Primary::Unknown);
        assert_eq!(primary(&vec![b' '; 2880]), Primary::Unknown);
        // Text that starts like FITS but is not: no "= " in columns 9-10.
        assert_eq!(primary(card("SIMPLE is a word").as_bytes()), Primary::Unknown);
        // A FITS file that says it does not conform.
        assert_eq!(primary(&header(&[kv("SIMPLE", "F"), kv("BITPIX", "8"), kv("NAXIS", "0")])), Primary::Unknown);
        // An extension header at offset 0 is not a primary header.
        assert_eq!(primary(&header(&[kv("XTENSION", "'IMAGE   '"), kv("BITPIX", "8")])), Primary::Unknown);
        // A few bytes are enough to tell most files apart.
        assert_eq!(primary(b"GIF89a"), Primary::Unknown);
        assert_eq!(primary(b"SIMPLE  = T"), Primary::NeedMore, "too short to tell yet");
    }

    #[test]
    fn garbage_in_a_header_makes_it_unknown() {
        let good = [kv("SIMPLE", "T"), kv("BITPIX", "16"), kv("NAXIS", "1"), kv("NAXIS1", "10")];
        let with = |extra: String| {
            let mut c = good.to_vec();
            c.push(extra);
            primary(&header(&c))
        };
        assert!(matches!(with(card("COMMENT ok")), Primary::Header { .. }));
        let mut binary = header(&good);
        binary[200] = 0;
        assert_eq!(primary(&binary), Primary::Unknown, "a NUL in a card");
        assert_eq!(
            with(kv("BITPIX", "16")),
            Primary::Header { header_len: RECORD, next: 2 * RECORD },
            "a repeat agrees"
        );
        assert_eq!(with(kv("BITPIX", "32")), Primary::Unknown, "BITPIX twice, differently");
        assert_eq!(with(kv("NAXIS2", "10")), Primary::Unknown, "an axis beyond NAXIS");
        assert_eq!(with(kv("PCOUNT", "-1")), Primary::Unknown, "a negative count");
        assert_eq!(with(kv("GROUPS", "'yes'")), Primary::Unknown);
        assert_eq!(with(card("END     x")), Primary::Unknown, "END with something after it");
        for bad in ["12", "7", "0", "8.0", "'8'", ""] {
            let h = header(&[kv("SIMPLE", "T"), kv("BITPIX", bad), kv("NAXIS", "0")]);
            assert_eq!(primary(&h), Primary::Unknown, "BITPIX = {bad:?}");
        }
        let h = header(&[kv("SIMPLE", "T"), kv("BITPIX", "8"), kv("NAXIS", "1000")]);
        assert_eq!(primary(&h), Primary::Unknown, "more axes than FITS allows");
        let h = header(&[kv("SIMPLE", "T"), kv("BITPIX", "8"), kv("NAXIS", "2"), kv("NAXIS1", "3")]);
        assert_eq!(primary(&h), Primary::Unknown, "NAXIS2 missing");
        let h = header(&[kv("SIMPLE", "T"), kv("NAXIS", "0")]);
        assert_eq!(primary(&h), Primary::Unknown, "BITPIX missing");
    }

    #[test]
    fn sizes_that_overflow_are_unknown() {
        let h = header(&[
            kv("SIMPLE", "T"),
            kv("BITPIX", "64"),
            kv("NAXIS", "3"),
            kv("NAXIS1", "4294967296"),
            kv("NAXIS2", "4294967296"),
            kv("NAXIS3", "2"),
        ]);
        assert_eq!(primary(&h), Primary::Unknown);
    }

    #[test]
    fn a_header_without_end_in_the_first_mib_is_unknown() {
        let mut h = card("SIMPLE  =                    T").into_bytes();
        while h.len() < MAX_HEADER + 80 {
            h.extend_from_slice(card("COMMENT padding").as_bytes());
        }
        assert_eq!(primary(&h), Primary::Unknown);
    }
}
