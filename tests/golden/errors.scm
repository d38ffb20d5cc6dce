;;; errors.scm -- error texts of the real daemon, one connection per case.
;;;
;;; Setup happens on a direct connection to the daemon (GOLDEN_DIRECT_SOCKET);
;;; every error case then opens exactly one connection through the recording
;;; proxy (GUIX_DAEMON_SOCKET), makes the failing request, and probes whether
;;; the session survived with `valid-path?'.  record.py attaches the captured
;;; bytes of case N to connection N.  Writes the JSON object described under
;;; "errors.json" in README.md.

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations) (guix utils))

;; Not exported by (guix derivations) 1.5.0.
(define drv->bytes (@@ (guix derivations) derivation->bytevector))

(define direct (open-connection (getenv "GOLDEN_DIRECT_SOCKET")))

(define %system "x86_64-linux")
(define %missing (string-append (%store-prefix)
                                "/00000000000000000000000000000000-missing"))

(define builder
  (add-text-to-store direct "builder.sh" "#!/bin/sh\necho building\n" '()))

(define victim
  (derivation direct "victim" builder '("-c" "true")
              #:system %system #:sources (list builder)))

(define multi
  (derivation direct "multi" builder '("-c" "true")
              #:system %system #:outputs '("out" "dev")
              #:sources (list builder)))

(define victim-text (utf8->string (drv->bytes victim)))
(define victim-out (derivation->output-path victim))
(define wrong-out
  ;; Same length and name, another hash part.
  (string-append (%store-prefix) "/" (make-string 32 #\1) "-victim"))

(define (replace-last str old new)
  (let ((i (string-rindex-of str old)))
    (string-append (substring str 0 i) new
                   (substring str (+ i (string-length old))))))

(define (string-rindex-of str sub)
  (let loop ((i (- (string-length str) (string-length sub))))
    (cond ((< i 0) (error "not found" sub))
          ((string=? (substring str i (+ i (string-length sub))) sub) i)
          (else (loop (- i 1))))))

(define (fod-text name algo hash)
  ;; A hand-written fixed-output derivation whose output path is a
  ;; placeholder: the daemon has to parse the hash before it can compare.
  (let ((out (string-append (%store-prefix) "/" (make-string 32 #\2) "-" name)))
    (string-append "Derive([(\"out\",\"" out "\",\"" algo "\",\"" hash "\")],"
                   "[],[],\"" %system "\",\"/bin/sh\",[],"
                   "[(\"out\",\"" out "\")])")))

(define %cases
  ;; (NAME OPERATION ARGUMENTS-FOR-JSON THUNK-TAKING-A-CONNECTION)
  `(("drv-wrong-output-path" "add-text-to-store"
     (("name" . "victim.drv")
      ("contents" . ,(string-replace-substring victim-text victim-out wrong-out))
      ("references" . ,(arr (list builder))))
     ,(lambda (s)
        (add-text-to-store s "victim.drv"
                           (string-replace-substring victim-text victim-out
                                                     wrong-out)
                           (list builder))))
    ("drv-wrong-env-output" "add-text-to-store"
     (("name" . "victim.drv")
      ("contents" . ,(replace-last victim-text victim-out wrong-out))
      ("references" . ,(arr (list builder))))
     ,(lambda (s)
        (add-text-to-store s "victim.drv"
                           (replace-last victim-text victim-out wrong-out)
                           (list builder))))
    ("fod-sha512-3-bytes" "add-text-to-store"
     (("name" . "bad-hash.drv")
      ("contents" . ,(fod-text "bad-hash" "sha512" "010203"))
      ("references" . #()))
     ,(lambda (s)
        (add-text-to-store s "bad-hash.drv"
                           (fod-text "bad-hash" "sha512" "010203") '())))
    ("fod-sha256-odd-length" "add-text-to-store"
     (("name" . "odd-hash.drv")
      ("contents" . ,(fod-text "odd-hash" "r:sha256" "abc"))
      ("references" . #()))
     ,(lambda (s)
        (add-text-to-store s "odd-hash.drv"
                           (fod-text "odd-hash" "r:sha256" "abc") '())))
    ("fod-sha1-not-hex" "add-text-to-store"
     (("name" . "nothex.drv")
      ("contents" . ,(fod-text "nothex" "sha1" (make-string 40 #\z)))
      ("references" . #()))
     ,(lambda (s)
        (add-text-to-store s "nothex.drv"
                           (fod-text "nothex" "sha1" (make-string 40 #\z)) '())))
    ("fod-unknown-algo" "add-text-to-store"
     (("name" . "unknown-algo.drv")
      ("contents" . ,(fod-text "unknown-algo" "r:sha42" "0102"))
      ("references" . #()))
     ,(lambda (s)
        (add-text-to-store s "unknown-algo.drv"
                           (fod-text "unknown-algo" "r:sha42" "0102") '())))
    ("drv-garbage" "add-text-to-store"
     (("name" . "garbage.drv") ("contents" . "garbage") ("references" . #()))
     ,(lambda (s) (add-text-to-store s "garbage.drv" "garbage" '())))
    ;; Cut between two tokens.  A cut inside a string is deliberately not
    ;; here: the daemon's string parser then appends EOF characters until
    ;; the allocation fails, which takes minutes and gigabytes before it
    ;; answers "build daemon out of memory" and drops the session.
    ("drv-truncated" "add-text-to-store"
     (("name" . "victim.drv")
      ("contents" . "Derive([(\"out\",")
      ("references" . #()))
     ,(lambda (s)
        (add-text-to-store s "victim.drv" "Derive([(\"out\"," '())))
    ("drv-unsorted-input-outputs" "derivation (add-text-to-store)"
     (("name" . "unsorted-inputs")
      ("input" . ,(derivation-file-name multi))
      ("input_outputs_in_order_given" . #("out" "dev")))
     ,(lambda (s)
        (derivation-file-name
         (derivation s "unsorted-inputs" builder '("-c" "true")
                     #:system %system
                     #:inputs (list (derivation-input multi '("out" "dev")))
                     #:sources (list builder)))))
    ("text-invalid-reference" "add-text-to-store"
     (("name" . "dangling") ("contents" . "x") ("references" . #(,%missing)))
     ,(lambda (s) (add-text-to-store s "dangling" "x" (list %missing))))
    ("text-bad-name-slash" "add-text-to-store"
     (("name" . "bad/name") ("contents" . "x") ("references" . #()))
     ,(lambda (s) (add-text-to-store s "bad/name" "x" '())))
    ("text-bad-name-dot" "add-text-to-store"
     (("name" . ".hidden") ("contents" . "x") ("references" . #()))
     ,(lambda (s) (add-text-to-store s ".hidden" "x" '())))
    ("text-bad-name-space" "add-text-to-store"
     (("name" . "a b") ("contents" . "x") ("references" . #()))
     ,(lambda (s) (add-text-to-store s "a b" "x" '())))
    ("text-bad-name-utf8" "add-text-to-store"
     (("name" . "caf\u00e9") ("contents" . "x") ("references" . #()))
     ,(lambda (s) (add-text-to-store s "caf\u00e9" "x" '())))
    ("text-empty-name" "add-text-to-store"
     (("name" . "") ("contents" . "x") ("references" . #()))
     ,(lambda (s) (add-text-to-store s "" "x" '())))
    ("add-to-store-unknown-algo" "add-to-store"
     (("name" . "f") ("recursive" . #f) ("algo" . "sha42")
      ("tree" . ,(tree->json `(regular ,(utf8 "hi\n")))))
     ,(lambda (s)
        (add-to-store s "f" #f "sha42" (materialise `(regular ,(utf8 "hi\n"))))))
    ("add-to-store-flat-directory" "add-to-store"
     (("name" . "d") ("recursive" . #f) ("algo" . "sha256")
      ("tree" . ,(tree->json `(directory ("f" (regular ,(utf8 "hi\n")))))))
     ,(lambda (s)
        (add-to-store s "d" #f "sha256"
                      (materialise `(directory ("f" (regular ,(utf8 "hi\n"))))))))
    ("query-path-info-invalid" "query-path-info"
     (("path" . ,%missing))
     ,(lambda (s) (query-path-info s %missing)))
    ("query-path-info-not-in-store" "query-path-info"
     (("path" . "/etc/passwd"))
     ,(lambda (s) (query-path-info s "/etc/passwd")))
    ("valid-path-not-in-store" "valid-path?"
     (("path" . "/etc/passwd"))
     ,(lambda (s) (valid-path? s "/etc/passwd")))
    ("references-invalid" "references"
     (("path" . ,%missing))
     ,(lambda (s) (references s %missing)))
    ("query-derivation-outputs-invalid" "query-derivation-outputs"
     (("path" . ,(string-append %missing ".drv")))
     ,(lambda (s) (query-derivation-outputs s (string-append %missing ".drv"))))
    ("hash-part-bad-length" "hash-part->path"
     (("hash_part" . "abc"))
     ,(lambda (s) (hash-part->path s "abc")))))

(define (run-case entry)
  (match entry
    ((name operation arguments thunk)
     (let ((s (connect)))
       (call-with-values (lambda () (daemon-error (lambda () (thunk s))))
         (lambda (result message status)
           (let ((survives? (guard (c (#t #f))
                              (valid-path? s builder)
                              #t)))
             (close-connection s)
             `(("name" . ,name)
               ("operation" . ,operation)
               ("arguments" . ,arguments)
               ("message" . ,(or message 'null))
               ("status" . ,(or status 'null))
               ("result" . ,(cond (message 'null)
                                  ((boolean? result) result)
                                  ((string? result) result)
                                  (else (object->string result))))
               ("session_survives" . ,survives?)))))))))

(write-json!
 `(("cases" . ,(arr (map run-case %cases)))))
