//! The entries of a zip archive whose entries are stored uncompressed (what torch.save
//! writes): the central directory, zip64 included, and each entry's data as a range of the
//! archive's bytes. Checksums are not verified; compressed entries are refused.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZipError {
    #[error("not a zip archive ({0})")]
    Malformed(String),
    #[error("zip entry '{0}' is compressed (torch.save stores entries uncompressed)")]
    Compressed(String),
}

fn le(b: &[u8], at: usize, n: usize) -> Result<u64, ZipError> {
    let s = at
        .checked_add(n)
        .and_then(|end| b.get(at..end))
        .ok_or_else(|| ZipError::Malformed("a record runs past the end of the file".into()))?;
    Ok(s.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64))
}

fn usize_of(v: u64) -> Result<usize, ZipError> {
    usize::try_from(v).map_err(|_| ZipError::Malformed("an offset does not fit in memory".into()))
}

/// Each entry's name and (start, length) of its data in `b`.
pub fn stored_entries(b: &[u8]) -> Result<HashMap<String, (usize, usize)>, ZipError> {
    const EOCD: u64 = 0x0605_4b50;
    let zip_err = |m: &str| ZipError::Malformed(m.to_string());
    // The end-of-central-directory record: 22 bytes and a comment of up to 65535.
    let lowest = b.len().saturating_sub(22 + 0xffff);
    let eocd = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| b.len() >= 22 && le(b, i, 4) == Ok(EOCD))
        .ok_or_else(|| zip_err("no end-of-central-directory record"))?;
    let mut count = le(b, eocd + 10, 2)?;
    let mut cd_size = le(b, eocd + 12, 4)?;
    let mut cd_at = le(b, eocd + 16, 4)?;
    if count == 0xffff || cd_size == 0xffff_ffff || cd_at == 0xffff_ffff {
        // Zip64: a locator just before the record points at the zip64 record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| le(b, l, 4) == Ok(0x0706_4b50))
            .ok_or_else(|| zip_err("no zip64 locator"))?;
        let z = usize_of(le(b, loc + 8, 8)?)?;
        if le(b, z, 4)? != 0x0606_4b50 {
            return Err(zip_err("no zip64 end-of-central-directory record"));
        }
        count = le(b, z + 32, 8)?;
        cd_size = le(b, z + 40, 8)?;
        cd_at = le(b, z + 48, 8)?;
    }
    let (cd_at, cd_end) = (usize_of(cd_at)?, usize_of(cd_at.saturating_add(cd_size))?);
    if cd_end > b.len() {
        return Err(zip_err(
            "the central directory runs past the end of the file",
        ));
    }
    let mut entries = HashMap::new();
    let mut at = cd_at;
    for _ in 0..count {
        if at >= cd_end || le(b, at, 4)? != 0x0201_4b50 {
            return Err(zip_err("a central directory entry is missing"));
        }
        let method = le(b, at + 10, 2)?;
        let mut packed = le(b, at + 20, 4)?;
        let mut size = le(b, at + 24, 4)?;
        let name_len = usize_of(le(b, at + 28, 2)?)?;
        let extra_len = usize_of(le(b, at + 30, 2)?)?;
        let comment_len = usize_of(le(b, at + 32, 2)?)?;
        let mut local = le(b, at + 42, 4)?;
        let name_at = at + 46;
        let name = b
            .get(name_at..name_at + name_len)
            .ok_or_else(|| zip_err("an entry name runs past the end of the file"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        // Zip64 extended information: the 8-byte values of the fields saturated above.
        let mut x = name_at + name_len;
        let extra_end = x + extra_len;
        while x + 4 <= extra_end {
            let (id, n) = (le(b, x, 2)?, usize_of(le(b, x + 2, 2)?)?);
            if id == 1 {
                let mut f = x + 4;
                for field in [&mut size, &mut packed, &mut local] {
                    if *field == 0xffff_ffff && f + 8 <= x + 4 + n {
                        *field = le(b, f, 8)?;
                        f += 8;
                    }
                }
            }
            x += 4 + n;
        }
        if method != 0 || packed != size {
            return Err(ZipError::Compressed(name));
        }
        let local = usize_of(local)?;
        if le(b, local, 4)? != 0x0403_4b50 {
            return Err(zip_err("a local entry header is missing"));
        }
        let start =
            local + 30 + usize_of(le(b, local + 26, 2)?)? + usize_of(le(b, local + 28, 2)?)?;
        let len = usize_of(size)?;
        if start.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err(zip_err(&format!(
                "entry '{name}' runs past the end of the file"
            )));
        }
        entries.insert(name, (start, len));
        at = extra_end + comment_len;
    }
    Ok(entries)
}
