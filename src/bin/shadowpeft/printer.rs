//! Streamed text on stdout, with stop strings.

use std::io::Write;

use anyhow::Result;

/// Prints streamed text, holding back any tail that could be the start of a stop string.
pub struct Printer {
    /// The text so far (cut before a stop string that matched).
    pub text: String,
    printed: usize,
    stops: Vec<String>,
    live: bool,
    /// Whether a stop string matched.
    pub stopped: bool,
}

impl Printer {
    /// A printer holding back the tails that could start one of `stops`; `live` prints.
    pub fn new(stops: &[String], live: bool) -> Self {
        Printer {
            text: String::new(),
            printed: 0,
            stops: stops.to_vec(),
            live,
            stopped: false,
        }
    }

    /// Prints what is held back (the generation ended).
    pub fn flush(&mut self) -> Result<()> {
        self.stops.clear();
        self.feed("")
    }

    /// Adds a piece of text and prints what can no longer start a stop string.
    pub fn feed(&mut self, piece: &str) -> Result<()> {
        self.text.push_str(piece);
        if let Some(i) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(i);
            self.stopped = true;
        }
        let hold = if self.stopped {
            0
        } else {
            self.stops
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        let mut upto = self.text.len().saturating_sub(hold).max(self.printed);
        while !self.text.is_char_boundary(upto) {
            upto -= 1;
        }
        if self.live && upto > self.printed {
            let mut out = std::io::stdout().lock();
            out.write_all(&self.text.as_bytes()[self.printed..upto])?;
            out.flush()?;
        }
        self.printed = upto.max(self.printed);
        Ok(())
    }
}
