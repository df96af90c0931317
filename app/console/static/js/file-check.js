// Is a chosen file CSV text? Read its first bytes in the browser, so that an image, a
// spreadsheet or a UTF-16 export is refused with a plain message before anything is sent.

const SNIFF_BYTES = 65536;

// Leading bytes of the files people pick by mistake, and what to call them.
const SIGNATURES = [
  [[0x89, 0x50, 0x4e, 0x47], "an image (PNG)"],
  [[0xff, 0xd8, 0xff], "an image (JPEG)"],
  [[0x47, 0x49, 0x46, 0x38], "an image (GIF)"],
  [[0x25, 0x50, 0x44, 0x46], "a PDF document"],
  [[0x50, 0x4b, 0x03, 0x04], "a spreadsheet or a ZIP archive"],
  [[0xd0, 0xcf, 0x11, 0xe0], "an Excel spreadsheet"],
  [[0x1f, 0x8b], "a compressed (gzip) file"],
];

const startsWith = (bytes, signature) => signature.every((b, i) => bytes[i] === b);

const CHOOSE = "Choose a CSV file with one code per line";

/** null when `file` reads as UTF-8 text; otherwise a sentence saying what it is instead. */
export async function notText(file) {
  if (file.size === 0) return "This file is empty. " + CHOOSE + ".";
  const bytes = new Uint8Array(await file.slice(0, SNIFF_BYTES).arrayBuffer());
  for (const [signature, what] of SIGNATURES) {
    if (startsWith(bytes, signature)) {
      const hint = what.includes("spreadsheet") ? ' (in a spreadsheet, save it as "CSV UTF-8")' : "";
      return `This file is ${what}, not CSV text. ${CHOOSE}${hint}.`;
    }
  }
  const utf16 = startsWith(bytes, [0xff, 0xfe]) || startsWith(bytes, [0xfe, 0xff]);
  if (utf16) return 'This file is UTF-16 text. Save it as "CSV UTF-8" and upload that.';
  if (bytes.includes(0)) return `This file is not text. ${CHOOSE}.`;
  try {
    // `stream: true`: a character cut in two at the end of the sample is not an error.
    new TextDecoder("utf-8", { fatal: true }).decode(bytes, { stream: true });
  } catch {
    return 'This file is not UTF-8 text. Save it as "CSV UTF-8" and upload that.';
  }
  return null;
}
